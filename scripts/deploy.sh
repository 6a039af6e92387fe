#!/usr/bin/env bash
# Deploys the stack of one samconfig.toml environment from an existing `sam build`, keeping the
# job image the stack runs now unless IMAGE_TAG names another; or prints one of its outputs.
#   scripts/deploy.sh ENV                 (ENV: staging or prod; IMAGE_TAG=commit optional)
#   scripts/deploy.sh --output ENV KEY    (e.g. ApiUrl, MonitorFunctionName, ImageRepositoryUri)
# Needs the AWS CLI, SAM CLI and credentials for the account (the workflows assume a role).
set -euo pipefail
cd "$(dirname "$0")/.."

stack_of() { # ENV
  python3 -c 'import sys, tomllib; print(tomllib.load(open("samconfig.toml", "rb"))[sys.argv[1]]["deploy"]["parameters"]["stack_name"])' "$1"
}
query() { # STACK JMESPATH
  aws cloudformation describe-stacks --stack-name "$1" --query "$2" --output text 2>/dev/null || true
}

if [ "${1:-}" = "--output" ]; then
  value="$(query "$(stack_of "$2")" "Stacks[0].Outputs[?OutputKey=='$3'].OutputValue")"
  [ -n "$value" ] && [ "$value" != None ] || { echo "deploy.sh: stack $(stack_of "$2") has no output $3" >&2; exit 1; }
  echo "$value"
  exit 0
fi

env="${1:?usage: deploy.sh ENV | deploy.sh --output ENV KEY}"
stack="$(stack_of "$env")"
tag="${IMAGE_TAG:-}"
if [ -z "$tag" ]; then
  # sam deploy falls back to the template's default (no job image) for a parameter it is not
  # given, so keep the one the stack runs.
  tag="$(query "$stack" "Stacks[0].Parameters[?ParameterKey=='ImageTag'].ParameterValue")"
  [ "$tag" = None ] && tag=""
fi
overrides="$(python3 -c 'import sys, tomllib; print(tomllib.load(open("samconfig.toml", "rb"))[sys.argv[1]]["deploy"]["parameters"].get("parameter_overrides", ""))' "$env")"
echo "deploy.sh: deploying $stack (job image tag: ${tag:-none})" >&2
# shellcheck disable=SC2086 # the overrides are KEY="VALUE" words
sam deploy --config-env "$env" --no-progressbar --parameter-overrides $overrides "ImageTag=$tag"
