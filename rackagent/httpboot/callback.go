package httpboot

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// MaxCallbackBytes bounds a callback's body: the coordinator's bound on a
// report's data, so nothing the agent accepts is refused there.
const MaxCallbackBytes = proto.MaxCallbackBytes

// MACHeader names the MAC a ramdisk's callback is about (or ?mac=).
const MACHeader = proto.MACHeader

// DiscoveryStep is the one callback a discovery ramdisk sends, without a
// token.
const DiscoveryStep = proto.StepInventory

var stepRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// handleCallback serves POST /v1/callback/{step}.
func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	ip := sourceIP(r)
	if !s.limiter.allow(ip, s.now()) {
		w.Header().Set("Retry-After", "1")
		writeError(w, proto.Errorf(proto.CodeRateLimited, "too many callbacks from %s; slow down", ip))
		return
	}
	step := r.PathValue("step")
	if !stepRE.MatchString(step) {
		writeError(w, proto.Errorf(proto.CodeInvalid, "step %q: want 1-63 letters, digits, '.', '_' or '-'", step))
		return
	}
	mac, err := callbackMAC(r)
	if err != nil {
		writeError(w, err)
		return
	}
	log := s.log.With("mac", mac, "step", step, "remote", r.RemoteAddr)
	discovery := false // a tokenless inventory, bound to its discovery boot

	node, boot, known := s.cfg.Backend.Boot(mac)
	var uuid string
	if known && node != nil {
		uuid = node.UUID
		log = log.With("node", uuid)
	}
	if token, ok := bearer(r); ok {
		if !known || boot.TaskToken == "" || subtle.ConstantTimeCompare([]byte(token), []byte(boot.TaskToken)) != 1 {
			log.Warn("callback refused: wrong task token")
			writeError(w, proto.Errorf(proto.CodeUnauthorized, "the token is not the current task token of %s", mac))
			return
		}
	} else if r.Header.Get("Authorization") != "" {
		writeError(w, proto.Errorf(proto.CodeUnauthorized, "want Authorization: Bearer <task token>"))
		return
	} else if step != DiscoveryStep || !s.RecentlyServedDiscovery(mac, s.cfg.DiscoveryWindow) {
		log.Warn("callback refused: no token, and not an inventory from a MAC recently served discovery")
		if known && boot.TaskToken != "" {
			writeError(w, proto.Errorf(proto.CodeUnauthorized, "a callback for %s needs its task token", mac))
			return
		}
		writeError(w, proto.Errorf(proto.CodeForbidden, "%s was not served the discovery script in the last %s; only its inventory is accepted without a token", mac, s.cfg.DiscoveryWindow))
		return
	} else if err := s.fromOwnAddress(r, mac); err != nil {
		// A discovery inventory is bound by the boot it was served and
		// by its source: the address this agent leased to the MAC.
		log.Warn("inventory refused: not from the address this agent leased to the MAC", "source", ip, "err", err)
		writeError(w, proto.Errorf(proto.CodeForbidden, "an inventory for %s is accepted only from the address this agent leased to it: %v", mac, err))
		return
	} else if to, _ := s.recent.servedTo(mac, s.now().Add(-s.cfg.DiscoveryWindow)); to != srcAddr(r) {
		// ... and the address the discovery script was served to.
		log.Warn("inventory refused: not from the address the discovery script was served to", "source", ip, "served_to", to.String())
		writeError(w, proto.Errorf(proto.CodeForbidden, "an inventory for %s is accepted only from the address its discovery script was served to (%s), not %s", mac, to, ip))
		return
	} else {
		discovery = true
	}

	body, err := readJSON(w, r)
	if err != nil {
		log.Warn("callback refused", "err", err)
		writeError(w, err)
		return
	}
	if step == proto.StepInventory {
		var inv proto.Inventory
		if err := json.Unmarshal(body, &inv); err != nil {
			log.Warn("inventory refused: does not decode", "source", ip, "err", err)
			writeError(w, proto.Errorf(proto.CodeInvalid, "inventory: %v", err))
			return
		}
		if err := inv.Validate(); err != nil {
			log.Warn("inventory refused", "source", ip, "err", err)
			writeError(w, prefixErr("inventory: ", err))
			return
		}
	}
	if step == proto.StepTask {
		rep, err := checkStepReport(node, body)
		if err != nil {
			log.Warn("step report refused", "source", ip, "err", err)
			writeError(w, err)
			return
		}
		log = log.With("task", rep.Task, "task_step", rep.Step, "event", rep.Event)
	}
	if discovery {
		switch s.recent.claim(mac, sha256.Sum256(body), s.now()) {
		case claimRepeat:
			log.Info("inventory repeated (a retry): answered, not queued again")
			writeJSON(w, http.StatusAccepted, map[string]bool{"accepted": true})
			return
		case claimTaken:
			log.Warn("inventory refused: this discovery boot already posted its inventory", "source", ip)
			writeError(w, proto.Errorf(proto.CodeConflict, "%s already posted the inventory of its discovery boot; one is accepted per boot", mac))
			return
		}
	}
	rep := proto.AgentReport{Kind: proto.ReportCallback, Time: s.now(), Step: step, MAC: mac, Node: uuid, Data: body}
	if d, ok := s.cfg.Reporter.(DurableReporter); ok {
		if err := d.ReportNow(rep); err != nil {
			// Not queued: free the boot's inventory slot so the
			// ramdisk's retry is queued, not answered as a repeat.
			if discovery {
				s.recent.release(mac, sha256.Sum256(body))
			}
			log.Error("callback not queued", "err", err)
			w.Header().Set("Retry-After", "1")
			writeError(w, proto.Errorf(proto.CodeUnavailable, "the callback could not be queued; retry: %v", err))
			return
		}
	} else {
		s.cfg.Reporter.Report(rep)
	}
	log.Info("callback accepted", "bytes", len(body))
	writeJSON(w, http.StatusAccepted, map[string]bool{"accepted": true})
}

// readJSON reads a body of at most MaxCallbackBytes and returns it
// compacted.
func readJSON(w http.ResponseWriter, r *http.Request) (json.RawMessage, error) {
	var raw bytes.Buffer
	_, err := raw.ReadFrom(http.MaxBytesReader(w, r.Body, MaxCallbackBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, proto.Errorf(proto.CodeTooLarge, "the body is over %d bytes", MaxCallbackBytes)
	case err != nil:
		return nil, proto.Errorf(proto.CodeInvalid, "reading the body: %v", err)
	}
	var out bytes.Buffer
	if err := json.Compact(&out, raw.Bytes()); err != nil {
		return nil, proto.Errorf(proto.CodeInvalid, "the body is not valid JSON: %v", err)
	}
	return out.Bytes(), nil
}

func callbackMAC(r *http.Request) (string, error) {
	h, q := r.Header.Get(MACHeader), r.URL.Query().Get(proto.MACQuery)
	raw := h
	switch {
	case h == "" && q == "":
		return "", proto.Errorf(proto.CodeInvalid, "name the MAC in the %s header or the mac query parameter", MACHeader)
	case h == "":
		raw = q
	}
	mac, err := parseMAC(raw)
	if err != nil {
		return "", proto.Errorf(proto.CodeInvalid, "%v", err)
	}
	if h != "" && q != "" {
		if m2, err := parseMAC(q); err != nil || m2 != mac {
			return "", proto.Errorf(proto.CodeInvalid, "the %s header and the mac query parameter disagree", MACHeader)
		}
	}
	return mac, nil
}

// bearer returns the token of an "Authorization: Bearer" header (the
// scheme is case-insensitive).
func bearer(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// srcAddr is the request's source address (invalid if it does not parse).
func srcAddr(r *http.Request) netip.Addr {
	a, _ := netip.ParseAddr(sourceIP(r))
	return a.Unmap()
}

// prefixErr puts prefix before a proto error's message, keeping its code.
func prefixErr(prefix string, err error) error {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return &proto.Error{Code: pe.Code, Message: prefix + pe.Message}
	}
	return proto.Errorf(proto.CodeInvalid, "%s%v", prefix, err)
}

func sourceIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) { proto.WriteError(w, err) }
