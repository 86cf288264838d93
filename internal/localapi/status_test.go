package localapi

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/store"
)

// TestStatusOf: every error the node returns maps to its status, wrapped or
// not; a node closing under a request is 503, not 500.
func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{node.ErrClosed, http.StatusServiceUnavailable},
		{&store.DiskFullError{Dir: "/h", Free: 1 << 20, Need: 128 << 20}, http.StatusInsufficientStorage},
		{fmt.Errorf("send: %w", node.ErrClosed), http.StatusServiceUnavailable},
		{node.ErrNotMember, http.StatusForbidden},
		{node.ErrNotAdmin, http.StatusForbidden},
		{node.ErrAlreadyMember, http.StatusConflict},
		{node.ErrTooLarge, http.StatusRequestEntityTooLarge},
		{node.ErrBadInvite, http.StatusBadRequest},
		{context.DeadlineExceeded, http.StatusGatewayTimeout},
		{fmt.Errorf("something else"), http.StatusInternalServerError},
	} {
		if got := statusOf(tc.err); got != tc.want {
			t.Errorf("statusOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
