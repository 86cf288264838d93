package cli

import (
	"fmt"
	"time"

	"github.com/p2pchat/p2pchat/internal/demo"
)

func runDemo(e *env, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: demo takes no arguments", errUsage)
	}
	ctx, cancel := commandContext(2 * time.Minute)
	defer cancel()
	return demo.Run(ctx, e.stdout)
}
