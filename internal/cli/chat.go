package cli

import "errors"

// runChat is being written; see the chat screen issue notes.
func runChat(e *env, args []string) error {
	return errors.New("chat screen: not built yet")
}
