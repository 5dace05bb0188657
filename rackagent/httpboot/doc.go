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
//	POST /v1/callback/{step}   a ramdisk's report (JSON, bearer task token);
//	                           step "task" is a proto.StepReport, checked
//	GET  /v1/task              a task ramdisk's plan (bearer task token)
//	GET  /v1/burnin/source     ?bytes=N: N bytes (network burn-in, token)
//	POST /v1/burnin/sink       the body read and dropped (burn-in, token)
//
// Nothing here authenticates the requester but a task token, so nothing
// an unauthenticated request does may grow without bound: a script or
// artifact GET is reported as a boot event only for a node of the boot
// state, at most once per node and event per BootEventEvery (an unknown
// MAC's boot is told by its DHCP sighting); a discovery inventory (no
// token) is accepted once per served discovery script, only from the
// address the script was served to and the MAC holds, checked with
// proto.Inventory.Validate within proto.MaxCallbackBytes.
package httpboot
