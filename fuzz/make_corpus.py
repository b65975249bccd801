#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from ../fixtures (samples and
recorded client sessions), the JWT test tokens of src/auth/fixtures.rs and hand-written
edge cases. Files are named by the SHA-1 of their content, as libFuzzer does, so running
this again only adds what is new. Run from anywhere: python3 fuzz/make_corpus.py
"""
import base64
import glob
import hashlib
import json
import os
import re

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
FIX = os.path.join(ROOT, "fixtures")

corpus = {t: set() for t in ["frame_v1", "frame_v2_text", "frame_v2_binary", "join", "filter", "jwt"]}


def body(path):
    return "\n".join(l for l in open(path, encoding="utf-8").read().splitlines() if not l.startswith("#")).strip()


# ---------------------------------------------------------------- frames from fixtures
for path in sorted(glob.glob(os.path.join(FIX, "*.txt"))):
    for line in body(path).splitlines():
        line = line.strip()
        if line.startswith("{"):
            corpus["frame_v1"].add(line.encode())
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("payload"), dict) and obj.get("event") == "phx_join":
                corpus["join"].add(json.dumps(obj["payload"], separators=(",", ":")).encode())
        elif line.startswith("["):
            corpus["frame_v2_text"].add(line.encode())
for path in sorted(glob.glob(os.path.join(FIX, "*.hex"))):
    corpus["frame_v2_binary"].add(bytes.fromhex(body(path)))

# ---------------------------------------------------------------- recorded sessions
for path in sorted(glob.glob(os.path.join(FIX, "recorded", "*.frames.jsonl"))):
    for line in open(path, encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("dir") != "in":
            continue
        if rec.get("kind") == "binary":
            corpus["frame_v2_binary"].add(bytes.fromhex(rec["data"]))
            continue
        data = rec["data"]
        msg = json.loads(data)
        if isinstance(msg, list):
            corpus["frame_v2_text"].add(data.encode())
            event, payload = msg[3], msg[4]
        else:
            corpus["frame_v1"].add(data.encode())
            event, payload = msg.get("event"), msg.get("payload")
        if event == "phx_join":
            corpus["join"].add(json.dumps(payload, separators=(",", ":")).encode())
            for b in (payload.get("config") or {}).get("postgres_changes") or []:
                corpus["filter"].add(json.dumps(b, separators=(",", ":")).encode())
                if isinstance(b.get("filter"), str):
                    corpus["filter"].add(b["filter"].encode())

# ---------------------------------------------------------------- hand-written frames
v1 = [
    '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}',
    '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1","join_ref":null,"extra":[1,2]}',
    '{"topic":"realtime:r\\u00e9\\ud83d\\ude00","event":"broadcast","payload":{"type":"broadcast","event":"\\u202e","payload":{"a":"\\u0000"}},"ref":"2","join_ref":"1"}',
    '{"topic":"realtime:x","event":"presence","payload":{"type":"presence","event":"track","payload":{"k":1}},"ref":"3","join_ref":"1"}',
    '{"topic":"realtime:x","event":"access_token","payload":{"access_token":"a.b.c"},"ref":"4","join_ref":"1"}',
    '{"topic":"t","event":"e","payload":[[[[[[[[]]]]]]]],"ref":"1"}',
    '{"topic":"t","event":"e","payload":{},"ref":"\\ud800"}',
    '\ufeff{"topic":"t","event":"e","payload":{},"ref":null}',
]
v2 = [
    '[null,"1","phoenix","heartbeat",{}]',
    '[null,null,"phoenix","heartbeat",{},"trailing",{"x":[1]}]',
    '["1","1","realtime:r\\u00e9\\ud83d\\ude00","broadcast",{"type":"broadcast","event":"\\u202e\\u0000","payload":{"a":"\u05d0"}}]',
    '["1","2","realtime:x","presence",{"type":"presence","event":"untrack"}]',
    '["1","3","realtime:x","phx_leave",{}]',
    '["1","4","realtime:x","access_token",{"access_token":null}]',
    '["1","5","realtime:x","phx_join",{"config":{"broadcast":{"self":"TRUE","ack":1,"replay":{"since":1,"limit":10}},"presence":{"key":{"a":1},"enabled":"true"},"private":"false","postgres_changes":[null,{"event":"*","schema":"public","table":"t","filter":"id=in.(1,2),name=eq.\\"a,b\\""}]},"user_token":"x"}]',
    '[null,null,"t","e",[[[[[[[[[[[[]]]]]]]]]]]]]',
    '[1,2,3,4,5]',
    '[null,null,"t","e"]',
    '{"topic":"t","event":"e","payload":{},"ref":null}',
]
corpus["frame_v1"].update(s.encode() for s in v1)
corpus["frame_v2_text"].update(s.encode() for s in v2)


def push(join_ref, ref, topic, event, meta, enc, payload):
    parts = [join_ref.encode(), ref.encode(), topic.encode(), event.encode(), meta.encode()]
    return bytes([3] + [len(p) for p in parts] + [enc]) + b"".join(parts) + payload


binary = [
    push("1", "2", "realtime:room", "cursor", "", 1, b'{"x":1}'),
    push("1", "", "realtime:room", "bin", "", 0, bytes(range(256))),
    push("1", "2", "realtime:\U0001F600", "\u202eevent", '{"persist":true}', 1, '["\u00e9"]'.encode()),
    push("", "", "", "", "", 1, b"null"),
    push("1", "2", "realtime:" + "x" * 246, "e" * 255, "", 0, b""),
    bytes([3, 255, 255, 255, 255, 255, 1]),
    bytes([3, 0, 0, 1, 0, 0, 1, 0xFF]),
    bytes([3, 0, 0, 1, 1, 0, 7, ord("t"), ord("e")]),
    bytes([4, 1, 1, 0, 1]) + b"te{}",
    bytes([0, 1, 1, 1, 1]) + b"1" + b"1" + b"t" + b"e" + b"{}",
    b"",
]
corpus["frame_v2_binary"].update(binary)

# ---------------------------------------------------------------- join payloads
joins = [
    {},
    {"config": None},
    {"config": []},
    {"config": {"presence": {"key": ""}}},
    {"config": {"presence": {"key": 42, "enabled": True}, "broadcast": {"self": "tRuE"}}},
    {"config": {"postgres_changes": [{"event": "INSERT", "schema": "public", "id": 7}, None, 5, {"schema": "*", "table": "t", "select": ["id"]}]}},
    {"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "t", "filter": "a=eq.1", "select": "id"}]}},
    {"config": {"private": True, "broadcast": {"replay": {"since": -1, "limit": "x"}}}, "access_token": "a.b.c"},
    {"user_token": 5, "access_token": None},
]
corpus["join"].update(json.dumps(j, separators=(",", ":")).encode() for j in joins)
corpus["join"].add(b"[" * 200)
corpus["join"].add(b'{"config":{"postgres_changes":[{"filter":"\\ud800"}]}}')

# ---------------------------------------------------------------- filters
filters = [
    "", "   ", "id=eq.1", "subject=in.(hidee,ho)", "id=gt.0,id=lt.100", "status=not.in.(a)",
    'name=eq."a,b"', 'name=eq."say \\"hi\\""', 'name=in.("a,b",c),x=is.null', "id=in.1,2",
    "id=eq.1,,id=eq.2", "id=eq", "a=eq.x.y", "undefined", "a=isdistinct.null", "a=imatch.^x$",
    "a=like.%25x%", "a=neq.\u00e9\U0001F600", "a=eq.(,),b=eq.)", 'a=eq."unterminated', "=eq.1",
    "a=not.not.eq.1", "a=in.()", "a=in.((nested))", "a=eq.\\",
]
corpus["filter"].update(f.encode() for f in filters)
bindings = [
    {"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.46"},
    {"event": "insert", "table": "t"},
    {"event": "DELETE", "schema": "s"},
    {},
    {"schema": 1, "table": None},
    {"schema": "*", "table": "t", "select": ["id"]},
    {"schema": "s", "table": "t", "select": "id"},
    {"schema": "s", "table": "t", "filter": "wrong"},
]
corpus["filter"].update(json.dumps(b, separators=(",", ":")).encode() for b in bindings)

# ---------------------------------------------------------------- JWTs
src = open(os.path.join(ROOT, "src", "auth", "fixtures.rs"), encoding="utf-8").read()
tokens = []
for name in ["PY_HS256", "PY_RS256", "PY_PS256", "PY_ES256", "PY_EDDSA"]:
    m = re.search(r"pub\(super\) const %s: &str = concat!\((.*?)\);" % name, src, re.S)
    tokens.append("".join(re.findall(r'"([^"]*)"', m.group(1))))


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


hs = tokens[0]
h, c, s = hs.split(".")
tokens += [
    "", "not-a-jwt", "a.b.c", "a.b.c.d", "..", hs.replace(".", "%2E"), " " + hs[:20] + "\n" + hs[20:] + "\t",
    h + "." + c + "." + s + "==", h + "=." + c + "." + s, hs[:-1], "%e2%82%ac.%zz.%",
    b64(b'{"alg":"none"}') + "." + c + ".",
    b64(b'{"alg":"HS256","kid":"rsa-1"}') + "." + c + "." + s,
    b64(b'{"alg":"ES512","kid":"ec-1"}') + "." + c + "." + s,
    b64(b'{"alg":"ES384","kid":"ec-1"}') + "." + c + "." + s,
    b64(b'{"alg":"Ed448","kid":"ed-1"}') + "." + c + "." + s,
    b64(b'{"alg":"HS256","kid":"oct-1"}') + "." + c + "." + s,
    b64(b'{"alg":"RS256"}') + "." + c + "." + s,
    b64(b"[]") + "." + c + "." + s,
]
corpus["jwt"].update(b"\x00" + t.encode() for t in tokens)


def mode1(header, claims):
    hb, cb = header.encode(), claims.encode()
    return b"\x01" + bytes([len(hb)]) + hb + cb


def mode2(header, claims, sig):
    hb, cb = header.encode(), claims.encode()
    return b"\x02" + bytes([len(hb)]) + hb + bytes([len(cb)]) + cb + sig


now = 1750000000
claims = [
    '{"role":"anon","exp":%d}' % (now + 60),
    '{"role":"anon","exp":%d.5,"iat":1.5,"sub":"u"}' % (now + 60),
    '{"role":"anon","exp":%d}' % (now - 60),
    '{"exp":%d}' % (now + 60),
    '{"role":"anon"}',
    '{"role":"anon","exp":"%d"}' % (now + 60),
    '{"role":5,"exp":1e300}',
    '{"role":"anon","exp":%d,"iat":"x"}' % (now + 60),
    '{"role":"anon","exp":-9223372036854775808}',
    '{"role":"anon","exp":18446744073709551615}',
    "[]",
]
for cl in claims:
    corpus["jwt"].add(mode1('{"alg":"HS256","typ":"JWT"}', cl))
for hd in ['{"alg":"HS384"}', '{"alg":"HS256","kid":"oct-1"}', '{"alg":"HS256","kid":"nope"}', '{"alg":"none"}', '{"alg":null}']:
    corpus["jwt"].add(mode1(hd, claims[0]))
for hd, siglen in [('{"alg":"RS256","kid":"rsa-1"}', 256), ('{"alg":"PS384","kid":"rsa-1"}', 256),
                   ('{"alg":"ES256","kid":"ec-1"}', 64), ('{"alg":"ES384","kid":"ec384-1"}', 96),
                   ('{"alg":"EdDSA","kid":"ed-1"}', 64), ('{"alg":"Ed25519","kid":"ed-1"}', 64),
                   ('{"alg":"HS512","kid":"oct-1"}', 64), ('{"alg":"HS256"}', 32), ('{"alg":"RS256","kid":"ec-1"}', 10)]:
    corpus["jwt"].add(mode2(hd, claims[0], bytes(siglen)))

# ---------------------------------------------------------------- write
total = 0
for target, items in corpus.items():
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for item in items:
        with open(os.path.join(d, hashlib.sha1(item).hexdigest()), "wb") as f:
            f.write(item)
    total += len(items)
    print(f"{target}: {len(items)} seeds")
print(f"total: {total}")
