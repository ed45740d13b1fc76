#!/bin/sh
# promtool for `make test` (tests/unit/test_monitoring.py): it comes with Debian's
# `prometheus` package. Only the tool is wanted: no recommended exporters, and the
# Prometheus server the package enables is stopped and disabled again if an init
# system started it (inside containers policy-rc.d usually keeps it from starting).
set -eu
command -v promtool >/dev/null 2>&1 && exit 0
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    update-rc.d prometheus disable >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null
