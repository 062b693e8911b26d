// Package wechatsim is a WeChat server simulator: a real HTTP server that answers the access-token
// endpoints and the send APIs of the wxapi catalog the way WeChat does (errcodes, errmsgs ending in
// "rid: …", body validation, subscribe value rules, token rotation, quotas, the 43108
// same-user concurrency rule, client_msg_id dedup), records what it was sent, and injects faults on
// demand.
//
// It owns: token issuing and checking, request validation, delivery and request recording, the
// fault schedule, and the /admin/ JSON endpoints used by people and tests to inspect and steer it.
// It does not own: the API catalog (sink/wxapi), the WeChat client (sink/wechat), or flag and
// config-file parsing (cmd/wechatsim).
//
// Integration tests use Start and the Go API; the demo, the benchmark and staging users run
// cmd/wechatsim and use the /admin/ endpoints.
package wechatsim
