"""Creates an AWS Batch job queue and job definition on a moto server for the end-to-end tests.

Usage: batch_setup.py ENDPOINT NAME  → prints {"queue": ..., "definition": ...} as JSON.
Batch jobs on moto run without docker once `{"batch": {"use_docker": false}}` is posted to
/moto-api/config, which this script does first.
"""
import json
import sys
import urllib.request

import boto3

endpoint, name = sys.argv[1], sys.argv[2]
request = urllib.request.Request(
    f"{endpoint}/moto-api/config",
    data=json.dumps({"batch": {"use_docker": False}}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
urllib.request.urlopen(request).read()

session = boto3.session.Session(region_name="us-east-1")
iam = session.client("iam", endpoint_url=endpoint)
batch = session.client("batch", endpoint_url=endpoint)
role = iam.create_role(
    RoleName=f"{name}-batch",
    AssumeRolePolicyDocument=json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "batch.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    ),
)["Role"]["Arn"]
env = batch.create_compute_environment(
    computeEnvironmentName=f"{name}-env", type="UNMANAGED", state="ENABLED", serviceRole=role
)["computeEnvironmentArn"]
queue = batch.create_job_queue(
    jobQueueName=f"{name}-queue",
    state="ENABLED",
    priority=1,
    computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}],
)["jobQueueName"]
definition = batch.register_job_definition(
    jobDefinitionName=f"{name}-batch-predict",
    type="container",
    containerProperties={"image": "mlops:latest", "vcpus": 1, "memory": 512, "command": ["mlops"]},
)["jobDefinitionName"]
print(json.dumps({"queue": queue, "definition": definition}))
