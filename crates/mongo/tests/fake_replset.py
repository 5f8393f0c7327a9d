"""A replica-set primary for the oplog tests: MockupDB (PyPI) speaking the
wire protocol, holding a few collections and an oplog the test controls.

Started by tests/fake.rs as `python3 fake_replset.py PORT`. It answers what
`tessera mongo backup` and `tessera mongo oplog` ask (hello, listDatabases,
listCollections, listIndexes, find and getMore, on collections and on
local.oplog.rs, tailable or not) from its state, and one command of its own,
`tesseraControl`, with which the test changes that state:
  data: {db: {coll: [docs]}}  the collections (replaces them)
  append: [entries]           oplog entries, added in ts order
  majority: Timestamp         the majority point hello reports (default: the newest entry)
  opTime: Timestamp           the last write hello reports (default: the newest entry), so
                              entries after it fall inside a backup's dump
  truncateBefore: Timestamp   drop older entries (the oplog rolled over)
  loseCursors: true           every open oplog cursor fails its next getMore (CursorNotFound)
  (any)                       the reply carries `asked`: counts of finds and getMores
Logins (saslStart) fail with AuthenticationFailed, as for a wrong password.
Built on ../shared/mongo/fake_replset.py, the tested recipe.
"""
import datetime
import sys
import threading
import time

from bson import Int64, ObjectId, SON, Timestamp
from mockupdb import MockupDB

port = int(sys.argv[1])
me = f"127.0.0.1:{port}"
lock = threading.Lock()
state = {"data": {}, "oplog": [], "majority": None, "cursors": {}, "next": 100, "lost": set(), "asked": {}}
wall = datetime.datetime(2024, 1, 1)


def newest():
    return state["oplog"][-1]["ts"] if state["oplog"] else Timestamp(1700000000, 1)


def hello(r):
    if r.command_name not in ("hello", "ismaster", "isMaster"):
        return False
    with lock:
        op = SON([("ts", state.get("opTime") or newest()), ("t", Int64(1))])
        maj = SON([("ts", state["majority"] or newest()), ("t", Int64(1))])
    r.reply(SON([("ok", 1), ("isWritablePrimary", True), ("ismaster", True), ("setName", "rs0"),
                 ("setVersion", 1), ("hosts", [me]), ("primary", me), ("me", me),
                 ("electionId", ObjectId("7fffffff0000000000000001")),
                 ("lastWrite", SON([("opTime", op), ("lastWriteDate", wall), ("majorityOpTime", maj),
                                    ("majorityWriteDate", wall)])),
                 ("maxBsonObjectSize", 16777216), ("maxMessageSizeBytes", 48000000),
                 ("maxWriteBatchSize", 100000), ("localTime", datetime.datetime.utcnow()),
                 ("logicalSessionTimeoutMinutes", 30), ("connectionId", 1), ("minWireVersion", 0),
                 ("maxWireVersion", 21), ("readOnly", False)]))
    return True


def count(name):
    state["asked"][name] = state["asked"].get(name, 0) + 1


def control(r):
    if r.command_name != "tesseraControl":
        return False
    d = r.doc
    with lock:
        if "data" in d:
            state["data"] = d["data"]
        if "append" in d:
            state["oplog"] = sorted(state["oplog"] + list(d["append"]), key=lambda e: e["ts"])
        if "majority" in d:
            state["majority"] = d["majority"]
        if "opTime" in d:
            state["opTime"] = d["opTime"]
        if "truncateBefore" in d:
            state["oplog"] = [e for e in state["oplog"] if e["ts"] >= d["truncateBefore"]]
        if d.get("loseCursors"):
            state["lost"] |= set(state["cursors"])
        asked = dict(state["asked"])
    r.reply(SON([("ok", 1), ("asked", asked)]))
    return True


def cursor_reply(r, ns, first, cid=0):
    r.reply(SON([("cursor", SON([("id", Int64(cid)), ("ns", ns), ("firstBatch", first)])), ("ok", 1)]))


def list_databases(r):
    if r.command_name != "listDatabases":
        return False
    with lock:
        names = sorted(state["data"]) + ["local"]
    r.reply(SON([("databases", [SON([("name", n)]) for n in names]), ("ok", 1)]))
    return True


def list_collections(r):
    if r.command_name != "listCollections":
        return False
    db = r.doc.get("$db")
    with lock:
        colls = sorted(state["data"].get(db, {}))
    cursor_reply(r, f"{db}.$cmd.listCollections",
                 [SON([("name", c), ("type", "collection"), ("options", SON()),
                       ("info", SON([("readOnly", False)]))]) for c in colls])
    return True


def list_indexes(r):
    if r.command_name != "listIndexes":
        return False
    db = r.doc.get("$db")
    cursor_reply(r, f"{db}.{r.doc['listIndexes']}", [SON([("v", 2), ("key", SON([("_id", 1)])), ("name", "_id_")])])
    return True


def find(r):
    if r.command_name != "find":
        return False
    db, coll = r.doc.get("$db"), r.doc.get("find")
    with lock:
        if (db, coll) != ("local", "oplog.rs"):
            count("find")
            cursor_reply(r, f"{db}.{coll}", list(state["data"].get(db, {}).get(coll, [])))
            return True
        count("oplogFind")
        since = r.doc.get("filter", {}).get("ts", {}).get("$gte", Timestamp(0, 0))
        sel = [e for e in state["oplog"] if e["ts"] >= since]
        if not r.doc.get("tailable"):
            cursor_reply(r, "local.oplog.rs", sel)
            return True
        cid = state["next"]
        state["next"] += 1
        # Where the cursor is: after the newest entry returned, or at the query.
        state["cursors"][cid] = (sel[-1]["ts"], None) if sel else (None, since)
        cursor_reply(r, "local.oplog.rs", sel, cid)
    return True


def get_more(r):
    if r.command_name != "getMore":
        return False
    cid = int(r.doc["getMore"])
    deadline = time.time() + min(r.doc.get("maxTimeMS", 1000), 1000) / 1000
    while True:
        with lock:
            count("getMore")
            if cid in state["lost"] or cid not in state["cursors"]:
                state["lost"].discard(cid)
                state["cursors"].pop(cid, None)
                r.command_err(code=43, errmsg=f"cursor id {cid} not found")
                return True
            after, since = state["cursors"][cid]
            rest = [e for e in state["oplog"] if (e["ts"] > after if after else e["ts"] >= since)]
            if rest or time.time() >= deadline:
                if rest:
                    state["cursors"][cid] = (rest[-1]["ts"], None)
                r.reply(SON([("cursor", SON([("id", Int64(cid)), ("ns", "local.oplog.rs"), ("nextBatch", rest)])), ("ok", 1)]))
                return True
        time.sleep(0.02)


def kill_cursors(r):
    if r.command_name != "killCursors":
        return False
    with lock:
        for c in r.doc.get("cursors", []):
            state["cursors"].pop(int(c), None)
    r.reply(SON([("ok", 1), ("cursorsKilled", r.doc.get("cursors", []))]))
    return True


s = MockupDB(port=port, auto_ismaster=False)
for handler in (hello, control, list_databases, list_collections, list_indexes, find, get_more, kill_cursors):
    s.autoresponds(handler)
# No user exists: every login fails as a real server's does.
s.autoresponds("saslStart", {"ok": 0, "code": 18, "codeName": "AuthenticationFailed", "errmsg": "Authentication failed."})
s.autoresponds("ping", {"ok": 1})
s.autoresponds("endSessions", {"ok": 1})
s.run()
print("listening", flush=True)
while True:
    time.sleep(1)
