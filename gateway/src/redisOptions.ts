/** Redis connection options from a URL: `redis://`, `rediss://`, or Redis Sentinel, the same
 * URLs the Python roles accept (src/capstan/cache/connect.py):
 *
 *   redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?sentinel_password=...]
 *
 * With Sentinel, ioredis asks the sentinels for the current primary on every (re)connection,
 * so a failover is followed without a restart. */
import type { RedisOptions } from 'ioredis';

export const SENTINEL_URL = /^rediss?\+sentinel:\/\//;

/** ioredis options for a Sentinel URL, or null for a plain `redis://` URL (ioredis parses it). */
export function sentinelOptions(url: string): RedisOptions | null {
  if (!SENTINEL_URL.test(url)) return null;
  const tls = url.startsWith('rediss');
  const rest = url.replace(SENTINEL_URL, '');
  const [authority, ...tail] = rest.split('/');
  const [pathPart, query = ''] = tail.join('/').split('?');
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at) : '';
  const hosts = at >= 0 ? authority.slice(at + 1) : authority;
  const [user, ...pass] = userinfo.split(':');
  const sentinels = hosts.split(',').filter(Boolean).map((hostport) => {
    const colon = hostport.lastIndexOf(':');
    const port = Number(hostport.slice(colon + 1));
    if (colon <= 0 || !Number.isInteger(port) || port <= 0) throw new Error(`sentinel address ${hostport} is not host:port`);
    return { host: hostport.slice(0, colon).replace(/^\[|\]$/g, ''), port };
  });
  const segments = pathPart.split('/').filter(Boolean);
  if (sentinels.length === 0 || segments.length < 1 || segments.length > 2 || (segments[1] !== undefined && !/^\d+$/.test(segments[1]))) {
    throw new Error('a Sentinel URL is redis+sentinel://host:port[,host:port]/service[/db]');
  }
  const password = pass.join(':');
  const sentinelPassword = new URLSearchParams(query).get('sentinel_password');
  return {
    sentinels,
    name: decodeURIComponent(segments[0]),
    db: segments[1] === undefined ? 0 : Number(segments[1]),
    ...(user ? { username: decodeURIComponent(user) } : {}),
    ...(password ? { password: decodeURIComponent(password) } : {}),
    ...(sentinelPassword ? { sentinelPassword } : {}),
    ...(tls ? { tls: {}, enableTLSForSentinelMode: true } : {}),
  };
}
