"""Transforms template.yaml offline with aws-sam-translator (what `sam deploy` sends CloudFormation)
and prints the resulting CloudFormation template as JSON on stdout.

Usage: transform_template.py TEMPLATE [KEY=VALUE ...]  (parameter overrides)

`sam build` replaces each function's `CodeUri: .` with its built zip; here it becomes
`s3://mlops-code/FUNCTION.zip` (CODE_BUCKET overrides the bucket).
"""

import json
import os
import sys

from samtranslator.parser.parser import Parser
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The template names no AWS managed policy by name, so no IAM lookup is needed offline."""

    def load(self):
        return {}


def main():
    # The pseudo parameters (AWS::Region…) come from the environment, never from AWS.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(sys.argv[1], encoding="utf-8") as f:
        template = yaml_parse(f.read())
    bucket = os.environ.get("CODE_BUCKET", "mlops-code")
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            if resource["Properties"].get("CodeUri") == ".":
                resource["Properties"]["CodeUri"] = f"s3://{bucket}/{name}.zip"
    parameters = dict(arg.split("=", 1) for arg in sys.argv[2:])
    out = transform(template, parameters, NoManagedPolicies(), Parser())
    json.dump(out, sys.stdout, indent=1, default=str)


if __name__ == "__main__":
    main()
