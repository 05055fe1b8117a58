package store

// Imported is a file of Binance's public archive whose klines are stored:
// the ledger by which an import goes on where it stopped, and imports a
// file again that the archive re-uploaded with a new checksum.
type Imported struct {
	Name     string // its key in the archive, data/futures/um/…
	Checksum string // sha256, hex
	Size     int64
}
