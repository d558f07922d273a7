// The network matrix: a real video call between two Debian Chromium browsers, each inside its
// own network namespace, through the bundled web client served by the daemon, which runs in a
// server namespace. Every scenario builds its own topology (veth pairs, routers that masquerade,
// client firewalls in nftables), proves that media flows both ways, and asserts from getStats()
// which path ICE selected. The topology, not the ICE policy, decides the path: the daemon hands
// out `ice_transport_policy = "all"`.
//
// Addresses are documentation ranges (198.51.100.0/24 is the server's public side, 203.0.113.0/24
// the links, 192.168.x the private networks behind routers, 2001:db8::/32 for IPv6). They live
// only in the namespaces this file creates; nothing reaches the host's network.
//
// Run: node --test --test-concurrency=1 tests/netns/   (root; see README.md)

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { HOST, scenario } from "./fixture.mjs";
import { Topology, preflight, removeLeftovers } from "./topology.mjs";

const PUBLIC = "198.51.100.1"; // the server's public IPv4 address
const PUBLIC6 = "2001:db8:100::1"; // and IPv6 address
const TIMEOUT = 150_000;

const open = new Set();
function topology(label) {
  const net = new Topology(label);
  open.add(net);
  return net;
}

before(async () => {
  preflight();
  await removeLeftovers();
});
after(async () => {
  for (const net of open) await net.teardown();
});

/** Neither end of the selected pair is a relay candidate. */
function direct(stats) {
  return stats.local?.candidateType !== "relay" && stats.remote?.candidateType !== "relay";
}

/** One end of the selected pair is a relay candidate. */
function relayed(stats) {
  return stats.local?.candidateType === "relay" || stats.remote?.candidateType === "relay";
}

/** Relay candidates on the local side of either browser's pair. */
function localRelays(result) {
  return [result.alice.local, result.bob.local].filter((candidate) => candidate?.candidateType === "relay");
}

function describe(result) {
  const end = (c) => (c ? `${c.candidateType}${c.relayProtocol ? `/${c.relayProtocol}` : ""}(${c.protocol} ${c.address}${c.relatedAddress ? ` from ${c.relatedAddress}` : ""}${c.url ? ` via ${c.url}` : ""})` : "none");
  return `Alice ${end(result.alice.local)} ↔ ${end(result.alice.remote)}; Bob ${end(result.bob.local)} ↔ ${end(result.bob.remote)}`;
}

/**
 * The server namespace with its public address on loopback and one point-to-point link per
 * client (no route between the clients: the server does not forward). With `srcRoutes`, replies
 * to each link leave from the public address, as for a server reached at its one public address.
 */
async function serverWithLinks(net, { links, srcRoutes = true, v6 = false }) {
  await net.namespace("server");
  await net.sysctl("server", "net.ipv4.ip_forward", 0);
  await net.sysctl("server", "net.ipv6.conf.all.forwarding", 0);
  await net.address("server", "lo", `${PUBLIC}/32`);
  if (v6) await net.address("server", "lo", `${PUBLIC6}/128`);
  for (const link of links) {
    await net.veth("server", link.serverIf, link.role, link.clientIf);
    for (const [serverCidr, clientCidr, subnet] of link.nets) {
      await net.address("server", link.serverIf, serverCidr);
      await net.address(link.role, link.clientIf, clientCidr);
      const gateway = serverCidr.split("/")[0];
      await net.route(link.role, "default", "via", gateway, "dev", link.clientIf);
      if (srcRoutes) {
        await net.route("server", subnet, "dev", link.serverIf, "src", gateway.includes(":") ? PUBLIC6 : PUBLIC);
      }
    }
  }
}

/**
 * One scenario as a test of its own: a fresh topology named `label`, the call (fixture.mjs's
 * `scenario`), then `check(result, path)` with `path` the selected pairs in words, and a log
 * line of how long connecting took.
 */
function matrixTest(name, label, { certIps, build, check }) {
  test(name, { timeout: TIMEOUT }, async () => {
    await scenario(topology(label), {
      certIps,
      build,
      check(result) {
        const path = describe(result);
        check(result, path);
        console.log(`scenario ${name.split(".")[0]}: connected in ${result.connectSecs.toFixed(1)} s; ${path}`);
      },
    });
  });
}

/**
 * A /30 from 203.0.113.0/24 between the server (`serverIf`, first address) and `role`
 * (`clientIf`, second address); `block` picks the /30 (0: .0/30, 1: .4/30, ...).
 */
function v4Link(role, serverIf, clientIf, block) {
  const base = 4 * block;
  return { role, serverIf, clientIf, nets: [[`203.0.113.${base + 1}/30`, `203.0.113.${base + 2}/30`, `203.0.113.${base}/30`]] };
}

/** A /64 2001:db8:`n`::/64 between the server (`::1` on `serverIf`) and `role` (`::2` on eth0). */
function v6Link(role, serverIf, n) {
  return { role, serverIf, clientIf: "eth0", nets: [[`2001:db8:${n}::1/64`, `2001:db8:${n}::2/64`, `2001:db8:${n}::/64`]] };
}

/** Alice on the server's first link, Bob on its second, each straight on it (eth0). */
const TWO_CLIENTS = [v4Link("alice", "to-a", "eth0", 0), v4Link("bob", "to-b", "eth0", 1)];

/**
 * What `build` returns: the daemon reached at `reach` with `config`, and where HOST resolves for
 * each browser (`reach` unless given).
 */
function plan(reach, config, { alice = reach, bob = reach } = {}) {
  return { daemon: { reach, config }, alice: { hostAddress: alice }, bob: { hostAddress: bob } };
}

/** The daemon on the public address, its relay on 3478 there, ICE URLs naming that address. */
const ON_PUBLIC = { http: { listen: `${PUBLIC}:443` }, turn: { listen: `${PUBLIC}:3478`, public_host: PUBLIC } };

/**
 * Both browsers' paths go through the relay, and every local relay candidate reached it over
 * UDP (`why` says why that matters here); `each(relay)` may assert more about each.
 */
function assertRelayedOverUdp(result, path, why, each = () => {}) {
  assert.ok(relayed(result.alice) && relayed(result.bob), `through the relay: ${path}`);
  const relays = localRelays(result);
  assert.ok(relays.length > 0, path);
  for (const relay of relays) {
    assert.equal(relay.relayProtocol, "udp", `${why}: ${path}`);
    each(relay);
  }
}

matrixTest("1. open network: both clients on the server's LAN connect directly (host or srflx)", "open", {
  certIps: ["203.0.113.1"],
  async build(net) {
    await net.namespace("server");
    for (const role of ["alice", "bob"]) {
      await net.namespace(role);
      await net.veth("server", `p-${role}`, role, "eth0");
    }
    await net.bridge("server", "lan", ["p-alice", "p-bob"]);
    await net.address("server", "lan", "203.0.113.1/24");
    await net.address("alice", "eth0", "203.0.113.10/24");
    await net.address("bob", "eth0", "203.0.113.11/24");
    return plan("203.0.113.1", { http: { listen: "203.0.113.1:443" }, turn: { listen: "203.0.113.1:3478", public_host: "203.0.113.1" } });
  },
  check(result, path) {
    assert.ok(direct(result.alice) && direct(result.bob), `a direct path: ${path}`);
    assert.ok(["host", "srflx"].includes(result.alice.local.candidateType), path);
    assert.ok(["host", "srflx"].includes(result.bob.local.candidateType), path);
    // Alice's own address talks to Bob's: the media did not touch the server.
    assert.equal(result.alice.local.address, "203.0.113.10", path);
    assert.equal(result.alice.remote.address, "203.0.113.11", path);
  },
});

matrixTest("2. both clients behind NAT with no route between them: the call goes through the relay over UDP", "nat", {
  certIps: [PUBLIC],
  async build(net) {
    // alice (192.168.1.2) — router-a (masquerades to 203.0.113.2) — server — router-b — bob.
    for (const role of ["router-a", "router-b", "alice", "bob"]) await net.namespace(role);
    await serverWithLinks(net, { links: [v4Link("router-a", "to-a", "wan", 0), v4Link("router-b", "to-b", "wan", 1)] });
    for (const [router, client, subnet] of [["router-a", "alice", 1], ["router-b", "bob", 2]]) {
      await net.veth(router, "lan", client, "eth0");
      await net.address(router, "lan", `192.168.${subnet}.1/24`);
      await net.address(client, "eth0", `192.168.${subnet}.2/24`);
      await net.route(client, "default", "via", `192.168.${subnet}.1`);
      await net.masquerade(router, "wan");
    }
    return plan(PUBLIC, ON_PUBLIC);
  },
  check(result, path) {
    assertRelayedOverUdp(result, path, "UDP reaches the relay through NAT", (relay) => {
      assert.equal(relay.address, PUBLIC, `the relayed address is the server's public one: ${path}`);
    });
  },
});

matrixTest("3. UDP blocked for one client: that client relays over TCP or TLS", "noudp", {
  certIps: [PUBLIC],
  async build(net) {
    for (const role of ["alice", "bob"]) await net.namespace(role);
    await serverWithLinks(net, { links: TWO_CLIENTS });
    // Alice may send any TCP, no UDP at all.
    await net.firewall("alice", ["meta l4proto tcp"]);
    return plan(PUBLIC, ON_PUBLIC);
  },
  check(result, path) {
    assert.equal(result.alice.local.candidateType, "relay", `Alice relays: ${path}`);
    assert.ok(["tcp", "tls"].includes(result.alice.local.relayProtocol), `Alice reaches the relay over TCP or TLS: ${path}`);
    assert.ok(relayed(result.bob), `Bob's path goes through the relay: ${path}`);
  },
});

matrixTest("4. only TCP 443 out for both: relay over TLS on the shared HTTPS port, page from the same port", "tls443", {
  certIps: [PUBLIC],
  async build(net) {
    for (const role of ["alice", "bob"]) await net.namespace(role);
    await serverWithLinks(net, { links: TWO_CLIENTS });
    for (const role of ["alice", "bob"]) await net.firewall(role, ["tcp dport 443"]);
    return plan(PUBLIC, {
      http: { listen: `${PUBLIC}:443` },
      // No UDP here, so a host name in the ICE URLs costs nothing (Chromium does not
      // resolve it for UDP), and every URL, turns: included, names the certificate's host.
      turn: { listen: `${PUBLIC}:3478`, public_host: HOST },
    });
  },
  check(result, path) {
    for (const [who, stats] of [["Alice", result.alice], ["Bob", result.bob]]) {
      assert.equal(stats.origin, `https://${HOST}`, `${who}'s page came from port 443`);
      assert.equal(stats.local.candidateType, "relay", `${who} relays: ${path}`);
      assert.equal(stats.local.relayProtocol, "tls", `${who} reaches the relay over TLS: ${path}`);
      assert.match(stats.local.url ?? "", new RegExp(`^turns:${HOST.replace(".", "\\.")}:443\\b`), `${who} uses turns: on the HTTPS host and port: ${path}`);
    }
  },
});

matrixTest("5. an IPv6-only client calls an IPv4-only client: the relay bridges the families", "v6v4", {
  certIps: [PUBLIC, PUBLIC6],
  async build(net) {
    for (const role of ["alice", "bob"]) await net.namespace(role);
    // Alice has IPv6 only, Bob IPv4 only; the server has both.
    await net.sysctl("bob", "net.ipv6.conf.all.disable_ipv6", 1);
    await net.sysctl("bob", "net.ipv6.conf.default.disable_ipv6", 1);
    await serverWithLinks(net, { v6: true, links: [v6Link("alice", "to-a", 1), v4Link("bob", "to-b", "eth0", 1)] });
    await net.sysctl("bob", "net.ipv6.conf.eth0.disable_ipv6", 1);
    return plan(
      PUBLIC,
      {
        http: { listen: "[::]:443" },
        // The host name resolves to each browser's family (Chromium does not resolve it for
        // UDP TURN URLs, so these calls use TCP or TLS to the relay).
        turn: { listen: "[::]:3478", public_host: HOST, relay_address: PUBLIC },
      },
      { alice: PUBLIC6 },
    );
  },
  check(result, path) {
    assert.ok(relayed(result.alice) && relayed(result.bob), `through the relay: ${path}`);
    // Alice has no IPv4 address and Bob no IPv6 one, so media flowing (checked by the call) is
    // the bridge; the stats show which side of it each browser stood on.
    assert.equal(result.alice.local.candidateType, "relay", `Alice (IPv6 only) relays: ${path}`);
    assert.ok(result.alice.local.relatedAddress?.includes(":"), `Alice reaches the relay over IPv6: ${path}`);
    assert.ok(!result.alice.local.address.includes(":"), `Alice's relayed address is IPv4, Bob's family: ${path}`);
    assert.ok(!result.bob.local.address.includes(":") && !result.bob.remote.address.includes(":"), `Bob's pair is IPv4: ${path}`);
  },
});

matrixTest("6. a server with two addresses, reached at the one not on the route back (only UDP and the page's TCP 443 out): relay over UDP", "twoaddr", {
  certIps: [PUBLIC],
  async build(net) {
    for (const role of ["alice", "bob"]) await net.namespace(role);
    // No source routes: replies to 203.0.113.2 leave from 203.0.113.1 unless the daemon answers
    // from the address it was asked at.
    await serverWithLinks(net, { srcRoutes: false, links: TWO_CLIENTS });
    for (const role of ["alice", "bob"]) await net.firewall(role, ["meta l4proto udp", `ip daddr ${PUBLIC} tcp dport 443`]);
    return plan(PUBLIC, {
      http: { listen: "0.0.0.0:443" },
      turn: { listen: "0.0.0.0:3478", public_host: PUBLIC, relay_address: PUBLIC },
    });
  },
  check(result, path) {
    assertRelayedOverUdp(result, path, "the relay answers over UDP from the address asked");
  },
});

matrixTest("6b. the same over IPv6: a server with several IPv6 addresses, reached at the one not on the route back: relay over UDP", "twoaddr6", {
  certIps: [PUBLIC6],
  async build(net) {
    for (const role of ["alice", "bob"]) await net.namespace(role);
    await serverWithLinks(net, { v6: true, srcRoutes: false, links: [v6Link("alice", "to-a", 1), v6Link("bob", "to-b", 2)] });
    for (const role of ["alice", "bob"]) await net.firewall(role, ["meta l4proto udp", `ip6 daddr ${PUBLIC6} tcp dport 443`]);
    return plan(PUBLIC6, {
      http: { listen: "[::]:443" },
      turn: { listen: "[::]:3478", public_host: PUBLIC6, relay_address: PUBLIC6 },
    });
  },
  check(result, path) {
    assertRelayedOverUdp(result, path, "the relay answers over UDP from the address asked", (relay) => {
      assert.equal(relay.address, PUBLIC6, `an IPv6 relayed address: ${path}`);
    });
  },
});
