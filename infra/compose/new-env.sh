#!/bin/sh
# Print .env.example with a fresh random value in every empty `NAME=` entry:
# `make .env`, or `sh infra/compose/new-env.sh > .env`. Needs only coreutils.
set -eu

example="${1:-.env.example}"

hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
b64() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }

while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        EVENTFOLD_SECRET_KEYS=) printf 'EVENTFOLD_SECRET_KEYS=k1:%s\n' "$(b64 32)" ;;
        [A-Z]*=) printf '%s%s\n' "$line" "$(hex 32)" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$example"
