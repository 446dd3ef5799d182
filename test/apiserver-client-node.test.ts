/** The API server double driven by @kubernetes/client-node 1.4.0, the library the controller watches with. */
import { CoreV1Api, KubeConfig, Watch } from '@kubernetes/client-node';
import t from 'tap';
import { pod, startDouble } from './mesh/apiserver-client.js';

async function clientFor(kubeconfig: string): Promise<{ config: KubeConfig; core: CoreV1Api }> {
  const config = new KubeConfig();
  config.loadFromFile(kubeconfig);
  return { config, core: config.makeApiClient(CoreV1Api) };
}

t.test('list with limit=2 over five pods: three pages through continue tokens, one resourceVersion', async (t) => {
  const { server, kubeconfig } = await startDouble(t);
  const { core } = await clientFor(kubeconfig);
  for (const name of ['p1', 'p2', 'p3', 'p4', 'p5']) server.objects('v1', 'pods').create(pod(name));
  const pages: string[][] = [];
  const versions = new Set<string | undefined>();
  let token: string | undefined;
  do {
    const page = await core.listNamespacedPod({ namespace: 'default', limit: 2, ...(token === undefined ? {} : { _continue: token }) });
    pages.push(page.items.map((p) => p.metadata?.name ?? ''));
    versions.add(page.metadata?.resourceVersion);
    token = page.metadata?._continue;
  } while (token !== undefined && token !== '');
  t.same(pages, [['p1', 'p2'], ['p3', 'p4'], ['p5']]);
  t.equal(versions.size, 1, 'the pages of one list share its resourceVersion');
  const created = await core.createNamespacedPod({ namespace: 'default', body: { metadata: { name: 'p6' }, spec: { containers: [{ name: 'c', image: 'x' }] } } });
  t.equal(created.metadata?.name, 'p6');
  t.ok(created.metadata?.uid, 'typed objects come back with their uid');
});

type Event = [type: string, name: string | undefined];

t.test('its Watch class receives ADDED, MODIFIED, DELETED and BOOKMARK; the double ends the watch cleanly', async (t) => {
  const { server, kubeconfig } = await startDouble(t);
  const { config } = await clientFor(kubeconfig);
  const events: Event[] = [];
  let notify: () => void = () => undefined;
  const until = (count: number): Promise<void> =>
    new Promise((resolve) => {
      notify = () => {
        if (events.length >= count) resolve();
      };
      notify();
    });
  let finished: (err: unknown) => void = () => undefined;
  const done = new Promise<unknown>((resolve) => (finished = resolve));
  const controller = await new Watch(config).watch(
    '/api/v1/namespaces/default/pods',
    { allowWatchBookmarks: true, resourceVersion: server.resourceVersion },
    (type, object: { metadata?: { name?: string } }) => {
      events.push([type, object.metadata?.name]);
      notify();
    },
    (err) => finished(err),
  );
  t.teardown(() => controller.abort());
  await server.waitForWatches(1);
  const pods = server.objects('v1', 'pods');
  pods.create(pod('w'));
  pods.patch('w', { metadata: { labels: { changed: 'yes' } } });
  pods.delete('w');
  server.sendBookmarks();
  await until(4);
  t.same(events, [['ADDED', 'w'], ['MODIFIED', 'w'], ['DELETED', 'w'], ['BOOKMARK', undefined]]);
  server.closeWatches();
  t.equal(await done, null, 'done() without an error when the server ends the stream');
});
