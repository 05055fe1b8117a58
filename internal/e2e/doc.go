// Package e2e holds klagg's end-to-end tests: the real klagg binary against
// the fake exchange on loopback, with a real SQLite file, checked against
// the exchange's own reference klines.
package e2e
