package boot

import (
	"encoding/json"
	"testing"
)

// The sample an init decodes while it waits (prepareConfig) reaches every
// type of a Config: a misspelt field would leave one undecoded.
func TestSampleConfig(t *testing.T) {
	var c Config
	if err := json.Unmarshal([]byte(sampleConfig), &c); err != nil {
		t.Fatal(err)
	}
	if c.Build == nil || len(c.Build.Dirs) != 1 || len(c.Build.Links) != 1 || len(c.Build.Files) != 1 ||
		len(c.Binds) != 1 || len(c.Volumes) != 1 || len(c.Tmpfs) != 1 || len(c.Env) != 1 {
		t.Errorf("the sample decodes to %+v", c)
	}
}
