/** The double stops and resumes on the same port with its store: what a client sees when an API server restarts. */
import t from 'tap';
import { ApiServer } from '../testbed/index.js';

async function get(url: string, ca: string): Promise<number> {
  const { request } = await import('node:https');
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, headers: { authorization: 'Bearer t' } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('stop refuses connections; resume serves the same objects on the same port', async (t) => {
  const api = await ApiServer.start();
  t.teardown(() => api.close());
  api.addToken('t', { username: 'tester' });
  api.objects('v1', 'namespaces').create({ metadata: { name: 'shop' } });
  const url = api.url;
  const rv = api.resourceVersion;
  await api.stop();
  await t.rejects(get(`${url}/api/v1/namespaces/shop`, api.caPem), { code: 'ECONNREFUSED' }, 'refused while stopped');
  api.objects('v1', 'namespaces').create({ metadata: { name: 'made-while-down' } });
  await api.resume();
  t.equal(api.url, url, 'same address and port');
  t.equal(await get(`${url}/api/v1/namespaces/shop`, api.caPem), 200, 'an object from before the stop');
  t.equal(await get(`${url}/api/v1/namespaces/made-while-down`, api.caPem), 200, 'and one written while stopped');
  t.ok(Number(api.resourceVersion) > Number(rv), 'the resourceVersion went on');
});
