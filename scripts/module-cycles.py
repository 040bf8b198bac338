#!/usr/bin/env python3
"""Lists import cycles between the modules of each crate (a module uses another when its file
names `crate::other`, also inside `use crate::{a, b}`). Exit 1 if there is any cycle.
Usage: scripts/module-cycles.py [crates/*]"""
import glob, os, re, sys

def modules(src):
    out = {}
    for path in glob.glob(os.path.join(src, '**', '*.rs'), recursive=True):
        rel = os.path.relpath(path, src)[:-3]
        name = rel.split(os.sep)[0]
        if name in ('lib', 'main'):
            continue
        out.setdefault(name, []).append(path)
    return out

def uses(paths, names):
    found = set()
    for p in paths:
        text = open(p).read()
        text = re.sub(r'//[^\n]*', '', text)
        for m in re.finditer(r'crate::(\{[^}]*\}|\w+)', text):
            grp = m.group(1)
            for w in re.findall(r'\b(\w+)', grp) if grp.startswith('{') else [grp]:
                if w in names:
                    found.add(w)
    return found

def sccs(graph):
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    for v in graph:
        if v not in index:
            visit(v)
    return out

bad = 0
for crate in sys.argv[1:] or sorted(glob.glob('crates/*')):
    mods = modules(os.path.join(crate, 'src'))
    graph = {m: uses(ps, set(mods)) - {m} for m, ps in mods.items()}
    for comp in sccs(graph):
        if len(comp) > 1:
            bad += 1
            print(f"{crate}: cycle among {', '.join(sorted(comp))}")
print(f"{bad} import cycle(s)")
sys.exit(1 if bad else 0)
