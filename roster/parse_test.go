package roster

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/wire"
)

// maxSignedEnvelope bounds a marshalled wire.Signed: the body plus the few
// hundred bytes of signature, signer and tags.
const maxSignedEnvelope = wire.MaxSignedBody + 1024

// Parse decodes and verifies a proto-marshalled wire.Signed holding an op:
// the tests' way to round-trip an op through its bytes. Production code
// receives ops as wire.Signed and calls Decode.
func Parse(b []byte) (*Op, error) {
	if len(b) > maxSignedEnvelope {
		return nil, fmt.Errorf("%w: signed op of %d bytes", ErrMalformed, len(b))
	}
	var s wire.Signed
	if err := proto.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return Decode(nil, &s)
}
