/** PostgreSQL connection options for the gateway's pool, from CAPSTAN_DATABASE_URL.
 *
 * The Python roles accept libpq's host list with `target_session_attrs=read-write`
 * (`postgresql://u:p@h1:5432,h2:5432/capstan?target_session_attrs=read-write`, docs/deployment.md
 * "Promoting a replica"); node-postgres takes one host. With a list, each new connection goes to
 * the host the last one reached, moves on to the next when it cannot connect or (read-write) when
 * the server is a standby, so a promoted replica is used without a restart. */
import pg from 'pg';

export interface HostList {
  /** One connection string per host, in the order given. */
  urls: string[];
  readWrite: boolean;
}

/** The hosts of a multi-host URL, or null for a plain one (node-postgres parses it). */
export function hostList(url: string): HostList | null {
  const m = /^(postgres(?:ql)?:\/\/)([^@/?#]*@)?([^/?#]*)(\/[^?#]*)?(\?[^#]*)?$/.exec(url);
  if (!m || !m[3].includes(',')) return null;
  const [, scheme, userinfo = '', hosts, path = '', query = ''] = m;
  const params = new URLSearchParams(query);
  const readWrite = params.get('target_session_attrs') === 'read-write';
  params.delete('target_session_attrs'); // libpq's, not node-postgres's
  const rest = `${path}${params.size ? `?${params}` : ''}`;
  const urls = hosts.split(',').filter(Boolean).map((host) => `${scheme}${userinfo}${host}${rest}`);
  return { urls, readWrite };
}

/** A pg.Client class for the pool that connects along `list` (see the module comment). */
export function failoverClient(list: HostList): typeof pg.Client {
  let current = 0;
  const next = (from: number) => {
    if (current === from) current = (from + 1) % list.urls.length;
  };
  class FailoverClient extends pg.Client {
    private readonly index: number;

    constructor(config: pg.ClientConfig) {
      const index = current;
      super({ ...config, connectionString: list.urls[index] });
      this.index = index;
    }

    // The pool calls connect(callback); callers may await it too. `any`: the base class
    // declares the two forms as overloads, which one implementation cannot restate.
    override connect(callback?: any): any {
      const done = this.connectChecked();
      if (!callback) return done;
      done.then(() => callback(null, this), (err: Error) => callback(err));
      return undefined;
    }

    private async connectChecked(): Promise<this> {
      try {
        await super.connect();
      } catch (err) {
        next(this.index);
        throw err;
      }
      if (list.readWrite) {
        const { rows } = await this.query<{ standby: boolean }>('SELECT pg_is_in_recovery() AS standby');
        if (rows[0].standby) {
          next(this.index);
          await this.end();
          throw new Error('the server is a standby (target_session_attrs=read-write): trying the next host');
        }
      }
      return this;
    }
  }
  return FailoverClient;
}
