#!/bin/bash
# One-shot (scale overlay): a CA and one transport certificate per Elasticsearch node, into the
# elasticsearch_certs volume. A multi-node cluster with security on requires transport TLS.
# HTTP stays plain inside backend-net, as in the single-node topology. Idempotent.
set -euo pipefail
cd /usr/share/elasticsearch
out=config/certs
nodes=(elasticsearch elasticsearch-2 elasticsearch-3)
if [ -f "$out/ca/ca.crt" ] && [ -f "$out/${nodes[-1]}/${nodes[-1]}.crt" ]; then
  echo "certificates already present"
  exit 0
fi
bin/elasticsearch-certutil ca --silent --pem -out "$out/ca.zip"
unzip -qo "$out/ca.zip" -d "$out"
{
  echo "instances:"
  for n in "${nodes[@]}"; do printf '  - name: %s\n    dns: [%s]\n' "$n" "$n"; done
} >"$out/instances.yml"
bin/elasticsearch-certutil cert --silent --pem --in "$out/instances.yml" -out "$out/certs.zip" \
  --ca-cert "$out/ca/ca.crt" --ca-key "$out/ca/ca.key"
unzip -qo "$out/certs.zip" -d "$out"
rm -f "$out/ca.zip" "$out/certs.zip"
chown -R 1000:0 "$out"
find "$out" -type d -exec chmod 0750 {} +
find "$out" -type f -exec chmod 0640 {} +
echo "certificates written"
