/** `node dist/server.js`: build the app from the environment, listen, shut down gracefully. */
import { buildApp } from './app';
import { Services } from './services';
import { loadSettings } from './settings';

async function main(): Promise<void> {
  let settings;
  try {
    settings = loadSettings();
  } catch (err) {
    process.stderr.write(`capstan-gateway: invalid settings: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const services = new Services(settings);
  await services.start();
  const app = await buildApp(services);
  await app.listen({ host: settings.host, port: settings.port });
  services.log.info({ instance: settings.instanceId, namespace: settings.brokerNamespace }, 'gateway ready');

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    services.log.info({ signal, connections: services.connections.size }, 'shutting down: closing clients with a reconnect hint');
    const force = setTimeout(() => process.exit(1), settings.shutdownSeconds * 1000 + 2000);
    force.unref();
    await services.close();
    await app.close();
    services.log.info('stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

void main().catch((err) => {
  process.stderr.write(`capstan-gateway: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
