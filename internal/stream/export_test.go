package stream

import "runtime"

var runtimeGosched = runtime.Gosched

func (s *Server) subscribers(symbol, interval string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[streamKey{symbol, interval}]; st != nil {
		return len(st.subs)
	}
	return 0
}
