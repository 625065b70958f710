package sandbox

import "github.com/msb-dev/msb/namespace"

// Validate checks both parts of the ID. Errors wrap namespace.ErrInvalidName
// (answered as invalid params, like errdefs.ErrInvalid).
func (id ID) Validate() error {
	if err := namespace.ValidateName("namespace", id.Namespace); err != nil {
		return err
	}
	return namespace.ValidateName("sandbox", id.Name)
}
