package bounce

import (
	"encoding/json"
	"fmt"
	"io"
)

// jsonLine is one line of WriteJSONLines output; the field names are the `herald bounce
// classify` contract.
type jsonLine struct {
	File      string `json:"file"`
	Recipient string `json:"recipient"`
	Status    string `json:"status"`
	Reason    Reason `json:"reason"`
	Hard      *bool  `json:"hard"`
}

// WriteJSONLines writes one JSON object per line for every recipient in rep, with the fields
// file, recipient, status, reason and hard (true, false or null). A report with no recipients
// writes nothing.
func WriteJSONLines(w io.Writer, file string, rep *Report) error {
	if rep == nil {
		return nil
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, r := range rep.Results {
		line := jsonLine{File: file, Recipient: r.Recipient, Status: r.Status, Reason: r.Reason, Hard: r.Hard}
		if err := enc.Encode(line); err != nil {
			return fmt.Errorf("bounce: writing result for %s: %w", file, err)
		}
	}
	return nil
}
