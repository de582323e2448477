#!/bin/sh
# Runs in the jmx-agent-init container: downloads the Prometheus JMX exporter java agent from
# Maven Central into /opt/jmx, verifies it, and exits 0 only when the jar is verified.
set -eu
V="${JMX_EXPORTER_VERSION:?}"
BASE="https://repo1.maven.org/maven2/io/prometheus/jmx/jmx_prometheus_javaagent/$V"
JAR="jmx_prometheus_javaagent-$V.jar"
DEST=/opt/jmx/jmx_prometheus_javaagent.jar
if [ -f "$DEST" ] && [ -f /opt/jmx/version ] && [ "$(cat /opt/jmx/version)" = "$V" ]; then
  echo "jmx agent $V already present"; exit 0
fi
tmp="$(mktemp -d)"
curl -fsSL --retry 5 -o "$tmp/$JAR" "$BASE/$JAR"
curl -fsSL --retry 5 -o "$tmp/$JAR.sha1" "$BASE/$JAR.sha1"
echo "$(cut -c1-40 "$tmp/$JAR.sha1")  $tmp/$JAR" | sha1sum -c -
if [ -n "${JMX_EXPORTER_SHA256:-}" ]; then
  echo "$JMX_EXPORTER_SHA256  $tmp/$JAR" | sha256sum -c -
fi
mv "$tmp/$JAR" "$DEST"
echo "$V" > /opt/jmx/version
chmod 0644 "$DEST"
echo "jmx agent $V verified and installed at $DEST"
