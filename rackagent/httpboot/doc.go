// Package httpboot is the rack agent's HTTP boot server: it renders the
// iPXE script of each MAC from the rack's desired boot state, serves
// kernels and initrds from a content-addressed, verified artifact cache,
// and accepts the callbacks of task ramdisks, passing what it sees on to
// the agent's outbox as reports.
//
// Routes:
//
//	GET  /boot/{mac}.ipxe      the MAC's iPXE script (text)
//	GET  /artifacts/{sha256}   a cached artifact (Range, HEAD, ETag)
//	POST /v1/callback/{step}   a ramdisk's report (JSON, bearer task token)
package httpboot
