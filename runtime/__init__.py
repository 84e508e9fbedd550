"""runtime: compile a plan's pieces for their sites, then run the plan as a service across sites.

Execution design (runtime.deploy, runtime.service, runtime.stage, runtime.agent, runtime.cluster)
------------------------------------------------------------------------------------------------
Input: a `planner.plan.Plan`: `assignment` (node -> site class), `pieces` (sources, ONNX pieces,
transforms `module:function` with fn(dict) -> list[dict] fan-out, sinks; tensors by original
name) and `edges` (src, dst, tensors, nbytes). `runtime.graph.ExecGraph` resolves where every
node runs (an unplaced source runs on the plan's edge class, a sink goes back to its source's
site) and, from app.yaml's edge `tensors` maps, how producer outputs are named for consumers.

One stage worker per site class (`runtime.stage.StageWorker`) runs ALL the nodes the plan puts
on that site in one process: consecutive nodes hand tensors over in memory (no hop), one
compute thread runs them one after another (as the planner assumes). Base-station and cloud
sites are Ray nodes (custom resource `site:<name>`, label `tierplan-site=<name>`); their worker
is a Ray actor pinned by that resource, supervised and restarted by Ray. Edge sites run
`python -m tierplan.runtime.agent --site NAME --listen HOST:PORT`, a plain process without Ray.

Tensors cross sites on direct gRPC calls between workers (`runtime.proto`, `runtime.wire`): raw
bytes + dtype + shape, one packed message up to 2 MiB (received arrays are views of it, no copy),
a stream of 1 MiB chunks above, message limits raised on both ends, request ids, and each call's
timeout is what remains of the request's deadline. Sending runs on a sender pool, so a site's
compute thread never waits for a downstream ack. Ray places and supervises; it
never carries tensors between stages and nothing calls `ray.get` between stages. Links are
emulated by the sender (`runtime.links`): a token bucket per link and direction for bandwidth,
RTT/2 per hop before delivery, store-and-forward over the route, as the cost model charges.
Between processes on one host (loopback peers, no TLS) a same-host fast path replaces the gRPC
call (`runtime.localwire`: a Unix socket; `runtime.shm`: tensors from 64 KiB on in a pooled
shared-memory segment that stage workers read in place); TLS deployments and remote peers keep
gRPC. `deploy(..., replicas=N)` runs N workers per Ray site: deliveries spread over them, and
requests lost with a dead replica start again on the others once, within their deadline.

The controller (`runtime.service.Service`, in the deploying process) learns where workers
listen (they register on every start), pushes the plan and peer table (`Configure`), checks
health, feeds each request's source tensors to the source's site and collects sink results.
`predict`, `predict_batch`, the FrontDoor gRPC service for other languages, Prometheus metrics
per site (stage latency histogram, queue depth, bytes and transfer time per link, batch sizes)
on loopback ports, and dynamic batching at cloud-tier sites (max batch, max wait) for runners
with a free batch dimension.

Faults: a hop that cannot be delivered before the deadline, a failed piece, or a site that the
health loop loses while a request is in flight end that request with a RuntimeFault naming the
site; requests never hang past their deadline. A restarted agent or a Ray node that comes back
(its actor restarts there) registers again and is reconfigured: the service recovers by itself.

Security between hosts: `tierplan certs` (runtime.security) makes a CA, per-site certificates
and a token; with `tls_dir` every server demands a CA-signed client certificate (mutual TLS)
and the token.

Multi-host: `ray start --head --resources '{"site:cloud": 1}' --labels tierplan-site=cloud` on
the cloud host, `ray start --address HEAD:6379 --resources '{"site:bs": 1}' --labels
tierplan-site=bs` on base-station hosts, `tierplan agent --site phone --listen 0.0.0.0:7001
--tls-dir DIR` on edge hosts, then `tierplan deploy plan.json --remote --ray-address HEAD:6379
--agent phone=HOST:7001 --tls-dir DIR`.

Compile side (runtime.compile, runtime.store, runtime.backends): see those modules.
"""
