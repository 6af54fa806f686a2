"""Print a Ray cluster's nodes and every actor it has run (dead ones included) as one JSON line (tests only).

    python tests/system/multinode_support/ray_actors.py ADDRESS [OUT.json]

Reads the GCS's own tables (``ray.nodes()`` and the actor table), so it works without the dashboard and after the
job that owned the actors has ended: where each actor ran is Ray's record, not the test's assumption.
"""

from __future__ import annotations

import json
import sys

import ray
from ray._private.state import state


def snapshot(address: str) -> dict:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = [{"node_id": n["NodeID"], "alive": bool(n["Alive"]), "resources": n.get("Resources", {}),
                  "head": "node:__internal_head__" in n.get("Resources", {})} for n in ray.nodes()]
        actors = [{"actor_id": actor_id, "name": a.get("Name", ""), "class_name": a.get("ActorClassName", ""),
                   "state": a.get("State"), "node_id": (a.get("Address") or {}).get("NodeID"), "pid": a.get("Pid"),
                   "job_id": a.get("JobID")}
                  for actor_id, a in state.actor_table(None).items()]
    finally:
        ray.shutdown()
    return {"nodes": nodes, "actors": actors}


if __name__ == "__main__":
    snap = json.dumps(snapshot(sys.argv[1]))
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as fh:
            fh.write(snap + "\n")
    print("RAY_ACTORS_JSON " + snap)
