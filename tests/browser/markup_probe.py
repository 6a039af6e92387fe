"""Writes the markup_probe data set (tests/browser/markup_probe.schema.toml): 300 rows, y = 2x +
the index of its kind + noise, where two of the three kinds are HTML and script.

Usage: markup_probe.py OUTPUT.csv
"""

import csv
import random
import sys

KINDS = ["plain", "<script>window.__mlopsXss = 1</script>", '<img src=x onerror="window.__mlopsXss = 2">']

random.seed(1)
with open(sys.argv[1], "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["x", "kind", "y"])
    for i in range(300):
        x = random.uniform(0, 10)
        writer.writerow([round(x, 3), KINDS[i % 3], round(2 * x + i % 3 + random.gauss(0, 0.1), 3)])
