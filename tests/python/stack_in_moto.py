"""Creates the stack of template.yaml in moto's CloudFormation, as `sam deploy` would: transformed
offline (transform_template.py), each function's code a zip in moto S3. Prints what the stack
made, resolved by CloudFormation, as JSON on stdout:
{"status", "reason", "outputs": {key: value}, "roles": {logical id: [policy document, ...]},
 "environments": {function logical id: {variable: value}}, "job_images": {job definition logical
 id: container image}, "stand_ins": {logical id: type},
 "not_created": {type: [logical id, ...]}} — what moto was given in place of a resource it cannot
create (STAND_INS), and what it skipped.

Usage: stack_in_moto.py ENDPOINT [KEY=VALUE ...]  (parameter overrides)
"""

import ast
import io
import json
import os
import re
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


# Resource types moto's CloudFormation cannot create, and how the stack test stands in for them.
# moto skips (with a warning) types it does not know; these it would fail on instead.
STAND_INS = {
    # A Lambda alias (AutoPublishAlias): its references point at the function itself, which is
    # what the alias resolves to after a deploy.
    "AWS::Lambda::Alias": "references to the alias point at its function",
    # moto's CloudFormation has no secrets: the test creates it through the Secrets Manager API
    # with the template's properties, and references point at it.
    "AWS::SecretsManager::Secret": "created through the API, references point at it",
    # moto names a repository without a name in capitals, which its ECR then refuses.
    "AWS::ECR::Repository": "ImageRepositoryName passed (a lowercase name)",
    # moto requires ServiceRole; AWS uses the Batch service-linked role when it is absent.
    "AWS::Batch::ComputeEnvironment": "ServiceRole set to the Batch service-linked role",
    # moto's CloudFormation has no alarms: they are left out and references to them (the
    # dashboard's) become placeholders; tests/e2e/template.rs checks them in the transformed
    # template.
    "AWS::CloudWatch::Alarm": "left out, references become placeholders",
}


def batch_service_role(iam):
    """The Batch service-linked role, created in moto as AWS creates it on first use."""
    path = "/aws-service-role/batch.amazonaws.com/"
    for role in iam.list_roles(PathPrefix=path)["Roles"]:
        return role["Arn"]
    return iam.create_service_linked_role(AWSServiceName="batch.amazonaws.com")["Role"]["Arn"]


def _replace_refs(node, logical_id, replacement, attribute=None):
    """`node` with each Ref to `logical_id` replaced (and each GetAtt, with `attribute`)."""
    if isinstance(node, dict):
        if node == {"Ref": logical_id}:
            return replacement
        get_att = node.get("Fn::GetAtt")
        if attribute is not None and isinstance(get_att, list) and get_att[0] == logical_id:
            return attribute
        if isinstance(node.get("Fn::Sub"), str) and f"${{{logical_id}" in node["Fn::Sub"]:
            text = node["Fn::Sub"].replace(f"${{{logical_id}}}", str(replacement))
            text = re.sub(r"\$\{" + logical_id + r"\.[A-Za-z]+\}", str(attribute), text)
            return {"Fn::Sub": text}
        return {k: _replace_refs(v, logical_id, replacement, attribute) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, logical_id, replacement, attribute) for v in node]
    return node


def for_moto(template, batch_role, secrets, stack):
    """The template with STAND_INS applied; (template, {logical id: type}) of what was replaced."""
    replaced = {}
    for name, resource in list(template["Resources"].items()):
        kind = resource["Type"]
        if kind == "AWS::SecretsManager::Secret":
            properties = resource["Properties"]
            arn = secrets.create_secret(
                Name=f"{stack}-{name}",
                SecretString=properties["SecretString"],
                Description=properties.get("Description", ""),
            )["ARN"]
            template = _replace_refs(template, name, arn)
        elif kind == "AWS::Lambda::Alias":
            function = resource["Properties"]["FunctionName"]
            template = _replace_refs(template, name, function)
        elif kind == "AWS::CloudWatch::Alarm":
            placeholder = f"moto-lacks-{name}"
            template = _replace_refs(template, name, placeholder, f"arn:aws:cloudwatch:::{placeholder}")
        else:
            continue
        del template["Resources"][name]
        replaced[name] = kind
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Batch::ComputeEnvironment":
            resource["Properties"].setdefault("ServiceRole", batch_role)
            replaced[name] = resource["Type"]
    return template, replaced


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
    iam = client("iam", endpoint)
    stack = f"mlops-{uuid.uuid4().hex[:12]}"
    template, replaced = for_moto(
        json.loads(template), batch_service_role(iam), client("secretsmanager", endpoint), stack
    )
    resources = template["Resources"]
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket=code_bucket)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    for name, resource in resources.items():
        if resource["Type"] == "AWS::Lambda::Function":
            s3.put_object(Bucket=code_bucket, Key=f"{name}.zip", Body=archive.getvalue())

    # moto names an ECR repository from the stack and logical id, in capitals ECR refuses.
    if not any(o.startswith("ImageRepositoryName=") for o in overrides):
        overrides = overrides + [f"ImageRepositoryName={stack.lower()}"]
    # moto splits a CommaDelimitedList parameter only when it is passed, not its default: pass
    # the defaults of those not overridden.
    given = {o.split("=", 1)[0] for o in overrides}
    overrides = overrides + [
        f"{name}={p['Default']}"
        for name, p in template.get("Parameters", {}).items()
        if p.get("Type") == "CommaDelimitedList" and "Default" in p and name not in given
    ]
    cf = client("cloudformation", endpoint)
    cf.create_stack(
        StackName=stack,
        TemplateBody=json.dumps(template),
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
    not_created = {}
    for name, resource in resources.items():
        if name not in replaced and not physical.get(name):
            not_created.setdefault(resource["Type"], []).append(name)
    lam = client("lambda", endpoint)
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
    batch = client("batch", endpoint)
    job_images = {}
    for name, resource in resources.items():
        if resource["Type"] == "AWS::Batch::JobDefinition" and physical.get(name):
            found = batch.describe_job_definitions(jobDefinitions=[physical[name]])["jobDefinitions"]
            job_images[name] = found[0]["containerProperties"]["image"] if found else None
    json.dump(
        {
            "status": described["StackStatus"],
            "reason": described.get("StackStatusReason"),
            "outputs": {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
            "roles": roles,
            "environments": environments,
            "job_images": job_images,
            "stand_ins": replaced,
            # What moto skipped (no physical resource), by type.
            "not_created": not_created,
        },
        sys.stdout,
        indent=1,
    )


if __name__ == "__main__":
    main()
