"""Creates the stack of template.yaml in moto's CloudFormation, as `sam deploy` would: transformed
offline (transform_template.py), each function's code a zip in moto S3. Prints what the stack
made, resolved by CloudFormation, as JSON on stdout:
{"status", "reason", "outputs": {key: value}, "roles": {logical id: [policy document, ...]},
 "environments": {function logical id: {variable: value}}}.

Usage: stack_in_moto.py ENDPOINT [KEY=VALUE ...]  (parameter overrides)
"""

import ast
import io
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile

import boto3

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "..", "..", "template.yaml")


def client(name, endpoint):
    return boto3.client(name, endpoint_url=endpoint, region_name="us-east-1")


def document(policy):
    # moto returns inline policy documents as JSON, URL-decoded JSON or a Python literal.
    if isinstance(policy, dict):
        return policy
    try:
        return json.loads(policy)
    except ValueError:
        return ast.literal_eval(policy)


def main():
    endpoint, overrides = sys.argv[1], sys.argv[2:]
    code_bucket = f"mlops-code-{uuid.uuid4().hex[:12]}"
    template = subprocess.run(
        [sys.executable, os.path.join(HERE, "transform_template.py"), TEMPLATE, *overrides],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "CODE_BUCKET": code_bucket},
    ).stdout
    resources = json.loads(template)["Resources"]
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket=code_bucket)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    for name, resource in resources.items():
        if resource["Type"] == "AWS::Lambda::Function":
            s3.put_object(Bucket=code_bucket, Key=f"{name}.zip", Body=archive.getvalue())

    cf = client("cloudformation", endpoint)
    stack = f"mlops-{uuid.uuid4().hex[:12]}"
    cf.create_stack(
        StackName=stack,
        TemplateBody=template,
        Parameters=[
            {"ParameterKey": k, "ParameterValue": v} for k, v in (o.split("=", 1) for o in overrides)
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.monotonic() + 120
    while True:
        described = cf.describe_stacks(StackName=stack)["Stacks"][0]
        if not described["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    physical = {
        r["LogicalResourceId"]: r.get("PhysicalResourceId")
        for r in cf.describe_stack_resources(StackName=stack)["StackResources"]
        if "LogicalResourceId" in r
    }
    iam, lam = client("iam", endpoint), client("lambda", endpoint)
    roles, environments = {}, {}
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Role" and physical.get(name):
            role = physical[name]
            roles[name] = [
                document(iam.get_role_policy(RoleName=role, PolicyName=p)["PolicyDocument"])
                for p in iam.list_role_policies(RoleName=role)["PolicyNames"]
            ]
        if resource["Type"] == "AWS::Lambda::Function" and physical.get(name):
            config = lam.get_function_configuration(FunctionName=physical[name])
            environments[name] = config.get("Environment", {}).get("Variables", {})
    json.dump(
        {
            "status": described["StackStatus"],
            "reason": described.get("StackStatusReason"),
            "outputs": {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
            "roles": roles,
            "environments": environments,
        },
        sys.stdout,
        indent=1,
    )


if __name__ == "__main__":
    main()
