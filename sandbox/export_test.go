package sandbox

import "time"

// LastActivity exposes lastActivity to the package's black-box tests.
func (s *Service) LastActivity(id ID) time.Time { return s.lastActivity(id) }
