package httpapi

import (
	"encoding/base64"
	"sort"
	"strconv"

	"github.com/metalfleet/metalfleet/proto"
)

// Pagination of list endpoints: ?limit=N&after=MARKER. The answer keeps
// its shape (a JSON array, in the list's order); when more items follow,
// the NextHeader names the marker of the next page. Without ?limit a list
// answers every item (what old clients expect).

// NextHeader carries the marker of the next page; absent on the last.
const NextHeader = proto.NextHeader

// MaxPageLimit is the largest ?limit a list takes.
const MaxPageLimit = 10000

// pageParams reads ?limit and ?after: limit 0 means every item.
func (c *call) pageParams() (limit int, after string, err error) {
	q := c.r.URL.Query()
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return 0, "", proto.Errorf(proto.CodeInvalid, "limit %q: want a whole number from 1 to %d", s, MaxPageLimit)
		}
		if n > MaxPageLimit {
			return 0, "", proto.Errorf(proto.CodeInvalid, "limit %d: at most %d", n, MaxPageLimit)
		}
		limit = n
	}
	after = q.Get("after")
	if after != "" {
		if _, err := base64.RawURLEncoding.DecodeString(after); err != nil || len(after) > 1024 {
			return 0, "", proto.Errorf(proto.CodeInvalid, "after %q: not a marker this API gave (take it from the %s header)", trim(after), NextHeader)
		}
	}
	return limit, after, nil
}

func trim(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// setNext sets the next-page header when next is not empty.
func (c *call) setNext(next string) {
	if next != "" {
		c.w.Header().Set(NextHeader, next)
	}
}

// marker makes the opaque marker of a sort key.
func marker(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

// page answers one page of items, which are in ascending order of key.
func page[T any](c *call, items []T, key func(T) string) ([]T, error) {
	limit, after, err := c.pageParams()
	if err != nil {
		return nil, err
	}
	start := 0
	if after != "" {
		k, _ := base64.RawURLEncoding.DecodeString(after)
		start = sort.Search(len(items), func(i int) bool { return key(items[i]) > string(k) })
	}
	items = items[start:]
	if limit > 0 && len(items) > limit {
		items = items[:limit]
		c.setNext(marker(key(items[limit-1])))
	}
	return items, nil
}
