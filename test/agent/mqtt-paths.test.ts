// The MQTT link's files are found relative to the gateway file, like every other path in it,
// not relative to wherever the agent was started.
import { describe, expect, it } from 'vitest';
import { relativeToGatewayFile } from '../../agent/controller.js';
import { MqttSchema } from '../../agent/config/schema.js';

describe('MQTT file paths', () => {
  it('resolves passwordFile and the TLS files against the gateway file\'s directory; absolute paths stay', () => {
    const c = MqttSchema.parse({ url: 'mqtts://broker:8883', passwordFile: 'secrets/mqtt.pw', tls: { ca: 'pki/ca.crt', cert: '/etc/wardgate/gw.crt', key: 'pki/gw.key' } });
    const r = relativeToGatewayFile(c, '/etc/wardgate');
    expect(r.passwordFile).toBe('/etc/wardgate/secrets/mqtt.pw');
    expect(r.tls).toMatchObject({ ca: '/etc/wardgate/pki/ca.crt', cert: '/etc/wardgate/gw.crt', key: '/etc/wardgate/pki/gw.key' });
  });
});
