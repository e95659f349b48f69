// Interop check: a js-libp2p node (another libp2p implementation) connects to a running
// tern-relay, identifies it, pings it, reserves a circuit slot, and a second js-libp2p node
// reaches the first through the relay and pings it. See README.md beside this file.
//
//   node js-libp2p.mjs /ip4/127.0.0.1/tcp/PORT/p2p/RELAY_PEER_ID
//
// Prints one "ok ..." line per step and exits 0, or "FAIL ..." and exits 1. Bounded by a
// 30 s timeout overall.

import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'

// js-libp2p 3 uses Promise.withResolvers (Node 22); Node 20 lacks it.
Promise.withResolvers ??= function () {
  let resolve, reject
  const promise = new Promise((a, b) => {
    resolve = a
    reject = b
  })
  return { promise, resolve, reject }
}

const HOP = '/libp2p/circuit/relay/0.2.0/hop'
const fail = (what) => {
  console.error(`FAIL ${what}`)
  process.exit(1)
}
setTimeout(() => fail('timed out after 30 s'), 30_000).unref()

const relay = multiaddr(process.argv[2] ?? fail('usage: node js-libp2p.mjs RELAY_MULTIADDR'))
const relayPeer = peerIdFromString(
  relay.toString().split('/p2p/')[1] ?? fail('relay address has no /p2p/ peer id'),
)

const node = (listen) =>
  createLibp2p({
    addresses: { listen },
    transports: [tcp(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping() },
  })

// Waits (bounded) until check() returns something truthy.
const until = async (what, check, ms = 15_000) => {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await check()
    if (v) return v
    if (Date.now() > deadline) fail(`waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

try {
  // Listening on <relay>/p2p-circuit makes the node reserve a slot on the relay.
  const listener = await node([`${relay.toString()}/p2p-circuit`])
  const circuit = await until('a circuit reservation', () =>
    listener.getMultiaddrs().find((a) => a.toString().includes('/p2p-circuit')),
  )
  console.log(`ok reserved: ${circuit.toString()}`)

  const info = await until('identify of the relay', async () => {
    try {
      const p = await listener.peerStore.get(relayPeer)
      return p.protocols.length > 0 ? p : undefined
    } catch {
      return undefined
    }
  })
  if (!info.protocols.includes(HOP)) fail(`relay does not offer ${HOP}: ${info.protocols}`)
  const agent = new TextDecoder().decode(info.metadata.get('AgentVersion') ?? new Uint8Array())
  console.log(`ok identified: agent ${agent}, ${info.protocols.length} protocols incl. hop`)

  const rtt = await listener.services.ping.ping(relay)
  console.log(`ok pinged relay: ${rtt} ms`)

  const dialer = await node([])
  const rttCircuit = await dialer.services.ping.ping(circuit)
  console.log(`ok pinged the listener through the relay circuit: ${rttCircuit} ms`)

  await dialer.stop()
  await listener.stop()
  process.exit(0)
} catch (e) {
  fail(e?.stack ?? String(e))
}
