package config

import (
	"slices"

	"github.com/hashicorp/hcl/v2"
)

// perZoneBlocks checks the part that named blocks allowed once per zone
// (rate_limit, access) have in common: a valid, unique name and a zone
// that exists and has no other block of the kind.
type perZoneBlocks struct {
	kind      string // the block type, "rate_limit"
	article   string // how a block of the kind is named in messages, "a rate_limit"
	dupZone   string // summary of a second block for one zone
	zoneHint  string // what zone = should name, for the missing-zone message
	zoneNames []string
	first     map[string]hcl.Range // block name → its label
	firstZone map[string]hcl.Range // zone → the first block's zone value
}

func newPerZoneBlocks(kind, article, dupZone, zoneHint string, zones []*zoneDef) *perZoneBlocks {
	p := &perZoneBlocks{kind: kind, article: article, dupZone: dupZone, zoneHint: zoneHint,
		first: map[string]hcl.Range{}, firstZone: map[string]hcl.Range{}}
	for _, z := range zones {
		p.zoneNames = append(p.zoneNames, z.zone.Name)
	}
	return p
}

// check reports the name's and the zone's problems and returns the zone
// (empty when it could not be read) and whether all was well.
func (p *perZoneBlocks) check(b *builder, name string, nameRange, defRange hcl.Range, zone *hcl.Attribute) (string, bool) {
	ok := true
	if !validName(name) {
		b.errorf(nameRange, "Invalid "+p.kind+" name",
			"Name %q must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 64).", name)
		ok = false
	}
	if f, dup := p.first[name]; dup {
		b.errorf(nameRange, "Duplicate "+p.kind+" name", "%s named %q is already defined at %s.", upperFirst(p.article), name, at(f))
		ok = false
	} else {
		p.first[name] = nameRange
	}
	if zone == nil {
		b.errorf(defRange, "Missing required argument",
			"%s %q needs zone = \"<%s>\"; defined zones: %s.", p.kind, name, p.zoneHint, zoneList(p.zoneNames))
		return "", false
	}
	z, diags := decodeString(zone)
	if !b.add(diags) {
		return "", false
	}
	switch {
	case b.whole && !slices.Contains(p.zoneNames, z):
		b.errorf(zone.Expr.Range(), "Unknown zone", "No zone block is named %q; defined zones: %s.", z, zoneList(p.zoneNames))
		ok = false
	default:
		if f, dup := p.firstZone[z]; dup {
			b.errorf(zone.Expr.Range(), p.dupZone, "Zone %q already has %s at %s; one per zone.", z, p.article, at(f))
			ok = false
		} else {
			p.firstZone[z] = zone.Expr.Range()
		}
	}
	return z, ok
}

func upperFirst(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
