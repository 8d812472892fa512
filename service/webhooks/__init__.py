"""Outbound webhooks: the outbox, delivery by the job worker, and what keeps it safe.

Events are written by `outbox.emit`; `handler` delivers one message per `webhook.deliver`
job (signed by `signing`, sent by `http` within the `ssrf` policy), paced by `gates` and
`rate_limit` with the timings of `config`; `outcomes` records each attempt and queues the next,
`disabling` turns off an endpoint and mails its owner, `redelivery` sends messages again, and
`retention` deletes old ones. Secrets at rest: `secret_box`, `reencrypt`; event payloads:
`catalogue`.
"""
