#!/usr/bin/env python3
"""Explain flood against `mlops serve`: N clients send maximal `?explain=true` requests (50
records each, the default cap) back to back while a probe measures `/health/live` and a plain
single-record predict beside them. Prints p50/p99/max of both per flood size.

Usage: explainflood.py MLOPS_BINARY HOME [SECONDS]   (HOME holds a quickstart model)
The binary and HOME are used as they are; the script creates an admin key and starts the server.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

RECORD = {
    "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0,
    "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252,
    "ocean_proximity": "NEAR BAY",
}
PATH = "/v1/models/california_housing/predict"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def request(conn, method, path, key, body=None):
    headers = {"x-api-key": key}
    if body is not None:
        headers["content-type"] = "application/json"
    started = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status, (time.perf_counter() - started) * 1e3


def flood(port, key, stop, counts):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps([RECORD] * 50)
    while not stop.is_set():
        status, _ = request(conn, "POST", PATH + "?explain=true", key, body)
        counts.append(status)


def measure(port, key, seconds, clients):
    stop = threading.Event()
    counts = []
    threads = [threading.Thread(target=flood, args=(port, key, stop, counts)) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0 if clients else 0)
    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    live, predict = [], []
    one = json.dumps(RECORD)
    until = time.time() + seconds
    while time.time() < until:
        status, ms = request(probe, "GET", "/health/live", key)
        assert status == 200, status
        live.append(ms)
        status, ms = request(probe, "POST", PATH, key, one)
        assert status == 200, status
        predict.append(ms)
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    ok = sum(1 for s in counts if s == 200)
    return live, predict, ok, len(counts)


def main():
    binary, home = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    key = subprocess.run(
        [binary, "--home", home, "keys", "create", "--name", "flood", "--scope", "admin"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [binary, "--home", home, "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"),
    )
    try:
        for _ in range(200):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                if request(conn, "GET", "/health/ready", key)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        print(f"{'explain clients':>15} {'live p50':>9} {'live p99':>9} {'live max':>9} "
              f"{'predict p50':>12} {'predict p99':>12} {'explain req (200)':>18}")
        for clients in (0, 4, 16):
            live, predict, ok, total = measure(port, key, seconds, clients)
            print(f"{clients:>15} {percentile(live, 50):>8.2f}ms {percentile(live, 99):>8.2f}ms "
                  f"{max(live):>8.2f}ms {percentile(predict, 50):>11.2f}ms "
                  f"{percentile(predict, 99):>11.2f}ms {ok:>9} of {total}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
