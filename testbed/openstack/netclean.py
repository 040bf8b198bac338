"""Remove what Neutron's agents left in this host's netfilter ruleset (iptables-nft, ip6tables-nft
and ebtables-nft all write nftables): rules jumping to a `neutron*` chain, then those chains; then
every table that did not exist before the bed started (DIR/run/nft-tables-before) and has no rule
left. Tables and rules of anything else on the host are not touched.

usage: /usr/bin/python3 netclean.py DIR         (called by down.sh after every agent stopped)
"""
import json, os, subprocess, sys

before_file = os.path.join(sys.argv[1], "run", "nft-tables-before")


def nft(*args):
    return subprocess.run(["nft", *args], capture_output=True, text=True)


def ruleset():
    out = nft("-j", "list", "ruleset").stdout
    return json.loads(out)["nftables"] if out.strip() else []


def target(rule):
    for e in rule["expr"]:
        for verb in ("jump", "goto"):
            if verb in e:
                return e[verb]["target"]
    return None


items = ruleset()
for i in items:
    r = i.get("rule")
    if r and not r["chain"].startswith("neutron") and (target(r) or "").startswith("neutron"):
        nft("delete", "rule", r["family"], r["table"], r["chain"], "handle", str(r["handle"]))
chains = [i["chain"] for i in items if "chain" in i and i["chain"]["name"].startswith("neutron")]
for c in chains:
    nft("flush", "chain", c["family"], c["table"], c["name"])
for c in chains:
    nft("delete", "chain", c["family"], c["table"], c["name"])
if os.path.exists(before_file):
    before = {tuple(line.split()[1:3]) for line in open(before_file) if line.startswith("table ")}
    items = ruleset()
    with_rules = {(i["rule"]["family"], i["rule"]["table"]) for i in items if "rule" in i}
    for i in items:
        t = i.get("table")
        if t and (t["family"], t["name"]) not in before and (t["family"], t["name"]) not in with_rules:
            nft("delete", "table", t["family"], t["name"])
