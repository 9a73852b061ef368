/** Several RabbitMQ cluster nodes in one CAPSTAN_BROKER_URL, as the Python roles read it
 * (src/capstan/node_urls.py): full URLs separated by commas, or one URL whose host part
 * lists the nodes (`amqp://u:p@r1:5672,r2:5672/vhost`). One URL per node, in order. */
export function brokerNodes(url: string): string[] {
  const nodes: string[] = [];
  for (const raw of url.split(',')) {
    const part = raw.trim();
    if (part.includes('://') || nodes.length === 0) nodes.push(part);
    else nodes[nodes.length - 1] += `,${part}`;
  }
  return nodes.flatMap(expandHosts);
}

function expandHosts(url: string): string[] {
  const match = /^([a-z+]+:\/\/)([^/?#]*)(.*)$/i.exec(url);
  if (!match) return [url];
  const [, scheme, authority, rest] = match;
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at + 1) : '';
  const hosts = (at >= 0 ? authority.slice(at + 1) : authority).split(',').filter(Boolean);
  if (hosts.length === 0) throw new Error('a broker node has no host');
  return hosts.map((host) => `${scheme}${userinfo}${host}${rest}`);
}
