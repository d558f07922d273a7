// Network namespaces for the matrix test: a small builder over iproute2 and nftables.
//
// Every namespace a run creates is named `<prefix><pid>-<scenario><n>-<role>`, so two runs never meet and a
// run's leftovers can be recognised (by a dead pid) and removed by the next run. The builder
// records what it created; `teardown()` kills the processes started inside (and anything else
// still running in its namespaces, such as a browser's helpers) and deletes the namespaces (their veth pairs, bridges and nftables rules go with them). Teardown also runs on
// SIGINT, SIGTERM and process exit, so an interrupted run leaves nothing behind.
//
// Needs root, iproute2 (`ip`) and nftables (`nft`). Every command has a timeout.

import { execFile, execFileSync, spawn } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { delimiter, join } from "node:path";

/** The prefix of every namespace this suite creates: "parley netns matrix". */
export const PREFIX = "pnm";
const COMMAND_TIMEOUT_MS = 10_000;

/** Runs a command with a timeout; rejects with its stderr when it fails. */
export function run(command, args, { input, timeout = COMMAND_TIMEOUT_MS, env } = {}) {
  return new Promise((resolveRun, reject) => {
    const child = execFile(command, args, { timeout, env, killSignal: "SIGKILL" }, (error, stdout, stderr) => {
      if (error) {
        const why = error.killed ? `timed out after ${timeout} ms` : `failed (${error.code})`;
        reject(new Error(`${command} ${args.join(" ")} ${why}: ${stderr.trim() || error.message}`));
      } else {
        resolveRun(stdout);
      }
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

/** Every topology not yet torn down, for the signal and exit handlers. */
const live = new Set();

function teardownAllSync() {
  for (const topology of live) topology.teardownSync();
}

let handlersInstalled = false;
function installHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on("exit", teardownAllSync);
  // `on`, not `once`: the test runner may signal twice, and a second signal without a handler
  // would kill the process halfway through the teardown.
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
    process.on(signal, () => {
      teardownAllSync();
      process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 }[signal]));
    });
  }
}

function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === "EPERM";
  }
}

/**
 * Fails at once, naming what is missing, when the suite cannot run here: it needs root and these
 * programs (Debian packages iproute2, nftables, openssl, libnss3-tools).
 */
export function preflight(programs = ["ip", "nft", "openssl", "certutil"]) {
  if (process.getuid?.() !== 0) throw new Error("the network matrix needs root (network namespaces, veth pairs, nftables)");
  const path = (process.env.PATH ?? "").split(delimiter).concat(["/usr/sbin", "/sbin"]);
  const missing = programs.filter((program) => !path.some((dir) => existsSync(join(dir, program))));
  if (missing.length > 0) {
    throw new Error(`missing programs: ${missing.join(", ")} (Debian: apt-get install -y iproute2 nftables openssl libnss3-tools)`);
  }
}

/** Kills (SIGKILL) every process still running in one of this suite's namespaces. */
function killInside(name) {
  let pids = "";
  try {
    pids = execFileSync("ip", ["netns", "pids", name], { timeout: COMMAND_TIMEOUT_MS, encoding: "utf8" });
  } catch {
    return; // The namespace is gone already.
  }
  for (const pid of pids.split(/\s+/).filter(Boolean).map(Number)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Exited meanwhile.
    }
  }
}

/** Deletes namespaces an earlier run of this suite left behind (its pid is gone), with what still runs in them. */
export async function removeLeftovers() {
  const list = await run("ip", ["netns", "list"]);
  for (const line of list.split("\n")) {
    const name = line.split(" ")[0];
    const match = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (match && Number(match[1]) !== process.pid && !pidAlive(Number(match[1]))) {
      killInside(name);
      await run("ip", ["netns", "delete", name]).catch(() => {});
    }
  }
}

let runCounter = 0;

export class Topology {
  /** `label` names the scenario in namespace names (short: namespace names show in `ip netns`). */
  constructor(label) {
    runCounter += 1;
    this.base = `${PREFIX}${process.pid}-${label}${runCounter}`;
    this.namespaces = [];
    this.children = new Set();
    /** Temporary directories of the scenario (config, data, certificates, browser homes). */
    this.dirs = [];
    installHandlers();
    live.add(this);
  }

  /** The full namespace name of a role ("server", "alice", ...). */
  ns(role) {
    return `${this.base}-${role}`;
  }

  /** Creates a namespace with its loopback up; returns its full name. */
  async namespace(role) {
    const name = this.ns(role);
    await run("ip", ["netns", "add", name]);
    this.namespaces.push(name);
    await this.ip(role, "link", "set", "lo", "up");
    // Addresses (the IPv6 link-local ones too) are final as soon as they are added: no duplicate
    // detection or router advertisement changes them a second later, which Chromium would see as
    // a network change (ERR_NETWORK_CHANGED on the page, new ICE gathering in a call).
    for (const scope of ["all", "default"]) {
      await this.sysctl(role, `net.ipv6.conf.${scope}.accept_dad`, 0);
      await this.sysctl(role, `net.ipv6.conf.${scope}.accept_ra`, 0);
    }
    return name;
  }

  /** `ip -n <ns> ...` */
  ip(role, ...args) {
    return run("ip", ["-n", this.ns(role), ...args]);
  }

  /** A command inside the namespace. */
  exec(role, command, args, options) {
    return run("ip", ["netns", "exec", this.ns(role), command, ...args], options);
  }

  async sysctl(role, key, value) {
    await this.exec(role, "sysctl", ["-qw", `${key}=${value}`]);
  }

  /** A veth pair between two namespaces, both ends up. */
  async veth(roleA, ifA, roleB, ifB) {
    await this.ip(roleA, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", this.ns(roleB));
    await this.ip(roleA, "link", "set", ifA, "up");
    await this.ip(roleB, "link", "set", ifB, "up");
  }

  /** A bridge in a namespace, up, with the given ports enslaved. */
  async bridge(role, name, ports) {
    await this.ip(role, "link", "add", name, "type", "bridge");
    for (const port of ports) await this.ip(role, "link", "set", port, "master", name);
    await this.ip(role, "link", "set", name, "up");
  }

  /** Adds an address (IPv6 without duplicate detection, so it is usable at once). */
  async address(role, ifname, cidr, device = ifname) {
    const v6 = cidr.includes(":");
    await this.ip(role, ...(v6 ? ["-6"] : []), "addr", "add", cidr, "dev", device, ...(v6 ? ["nodad"] : []));
  }

  async route(role, ...spec) {
    const v6 = spec.some((part) => part.includes(":"));
    await this.ip(role, ...(v6 ? ["-6"] : []), "route", "replace", ...spec);
  }

  /** Loads an nftables ruleset (the `nft -f` syntax) into the namespace. */
  async nft(role, ruleset) {
    await this.exec(role, "nft", ["-f", "-"], { input: ruleset });
  }

  /** A router: forwards between its interfaces and masquerades what leaves by `wan`. */
  async masquerade(role, wan) {
    await this.sysctl(role, "net.ipv4.ip_forward", 1);
    await this.nft(
      role,
      `table ip nat {
        chain postrouting {
          type nat hook postrouting priority srcnat; policy accept;
          oifname "${wan}" masquerade
        }
      }`,
    );
  }

  /**
   * A client firewall: what may leave is `allowOut` (nft rule text, e.g. `tcp dport 443`;
   * none = nothing but loopback), plus replies and IPv6 neighbour discovery (without which
   * IPv6 does not work at all); nothing unsolicited comes in, so a relay's packets cannot open
   * the path the scenario forbids.
   */
  async firewall(role, allowOut) {
    const out = allowOut.map((rule) => `        ${rule} accept`).join("\n");
    await this.nft(
      role,
      `table inet client {
        chain output {
          type filter hook output priority filter; policy drop;
          oifname "lo" accept
          ct state established,related accept
          icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept
${out}
        }
        chain input {
          type filter hook input priority filter; policy drop;
          iifname "lo" accept
          ct state established,related accept
          icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept
        }
      }`,
    );
  }

  /** Starts a long-running process inside the namespace; teardown kills it. */
  spawn(role, command, args, options = {}) {
    const child = spawn("ip", ["netns", "exec", this.ns(role), command, ...args], options);
    this.children.add(child);
    child.on("exit", () => this.children.delete(child));
    return child;
  }

  /** Kills what runs inside (SIGTERM, then SIGKILL after 5 s) and deletes every namespace. */
  async teardown() {
    for (const child of [...this.children]) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((resolveExit) => child.once("exit", resolveExit));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await Promise.race([exited, new Promise((r) => setTimeout(r, 7000))]);
      clearTimeout(timer);
    }
    for (const name of this.namespaces.splice(0).reverse()) {
      killInside(name);
      await run("ip", ["netns", "delete", name]).catch(() => {});
    }
    for (const dir of this.dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
    live.delete(this);
  }

  /** The same from a signal or exit handler, where nothing asynchronous runs any more. */
  teardownSync() {
    for (const child of this.children) {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }
    for (const name of this.namespaces.splice(0).reverse()) {
      killInside(name);
      try {
        execFileSync("ip", ["netns", "delete", name], { timeout: COMMAND_TIMEOUT_MS, stdio: "ignore" });
      } catch {
        // Deleted already, or ip is gone: nothing more to do here.
      }
    }
    for (const dir of this.dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
    live.delete(this);
  }
}
