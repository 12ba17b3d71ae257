"""Broker nodes that act as one, over Redis (README, "Scaling out").

Imported only with `--redis`: a single broker never loads redis-py. Each module owns one
part: `link` the connection and its outages, `framewire` the frame message format,
`relay` frames out to the other nodes, `subscriber` frames and news in from them,
`ownership` one publisher per camera, `demand` viewer counts over all nodes,
`revocations` sign-outs, and `node` wires them into one broker.
"""
