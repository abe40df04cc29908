package app

import (
	"embed"
	"fmt"
	htmltemplate "html/template"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	texttemplate "text/template"

	"github.com/google/go-cmp/cmp"
)

// The email templates the service rendered with before it wrote its
// emails in code (see Renderer): the reference that Renderer's output is
// compared with, and the baseline of BenchmarkRender.
//
//go:embed testdata/templates/*.tmpl
var templateFS embed.FS

// templateRenderer renders notices with the templates in testdata.
type templateRenderer struct {
	text *texttemplate.Template
	html *htmltemplate.Template
}

// templateView is what the templates see: the notice's fields and the
// rendered subject.
type templateView struct {
	Kind      Kind
	OrderID   string
	Recipient string
	Items     []Item
	Total     string
	Reason    string
	Subject   string
}

func newTemplateRenderer() (*templateRenderer, error) {
	text, err := texttemplate.New("").Option("missingkey=error").ParseFS(templateFS, "testdata/templates/text.tmpl")
	if err != nil {
		return nil, fmt.Errorf("parse text templates: %w", err)
	}
	html, err := htmltemplate.New("").Option("missingkey=error").ParseFS(templateFS, "testdata/templates/html.tmpl")
	if err != nil {
		return nil, fmt.Errorf("parse html templates: %w", err)
	}
	return &templateRenderer{text: text, html: html}, nil
}

// Render renders n as the service did with its templates.
func (r *templateRenderer) Render(n Notice) (Email, error) {
	if kindToProto(n.Kind) == 0 {
		return Email{}, fmt.Errorf("render email: unknown kind %q", n.Kind)
	}
	v := templateView{Kind: n.Kind, OrderID: n.OrderID, Recipient: n.Recipient, Items: n.Items, Total: n.Total, Reason: n.Reason}
	var subject, text, html strings.Builder
	if err := r.text.ExecuteTemplate(&subject, string(n.Kind)+".subject", v); err != nil {
		return Email{}, err
	}
	v.Subject = strings.Join(strings.Fields(subject.String()), " ")
	if err := r.text.ExecuteTemplate(&text, string(n.Kind)+".text", v); err != nil {
		return Email{}, err
	}
	if err := r.html.ExecuteTemplate(&html, string(n.Kind)+".html", v); err != nil {
		return Email{}, err
	}
	return Email{To: n.Recipient, Subject: v.Subject, Text: text.String(), HTML: html.String(), MessageID: MessageID(n.OrderID, n.Kind)}, nil
}

// TestRenderMatchesTemplates renders notices of every kind, with and
// without each optional part and with values that need escaping, both
// with Renderer and with the templates, and wants the same emails.
func TestRenderMatchesTemplates(t *testing.T) {
	ref, err := newTemplateRenderer()
	if err != nil {
		t.Fatalf("templates: %v", err)
	}
	r, err := NewRenderer()
	if err != nil {
		t.Fatalf("new renderer: %v", err)
	}
	tricky := []string{"", "plain", `<script>alert("x")</script>`, "a & b + c 'd'", "nul\x00byte",
		"line\r\nbreak\ttab", "ünïcødé €", "bad \xff\xfe utf-8", "  spaced  out  ", "&amp; already"}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() string { return tricky[rng.IntN(len(tricky))] }
	var notices []Notice
	for _, k := range Kinds {
		for _, items := range [][]Item{nil, {{ProductID: "SKU-1", Quantity: 2, UnitPrice: "EUR 9.50"}}} {
			for _, total := range []string{"", "EUR 19.00"} {
				for _, reason := range []string{"", "out of stock"} {
					notices = append(notices, Notice{Kind: k, OrderID: "0192-id", Recipient: "ada@example.com",
						Items: items, Total: total, Reason: reason})
				}
			}
		}
	}
	for range 2000 {
		n := Notice{Kind: Kinds[rng.IntN(len(Kinds))], OrderID: pick(), Recipient: pick(), Total: pick(), Reason: pick()}
		for range rng.IntN(4) {
			n.Items = append(n.Items, Item{ProductID: pick(), Quantity: rng.Int32N(20001) - 10000, UnitPrice: pick()})
		}
		notices = append(notices, n)
	}
	// An unknown kind fails both ways.
	for _, renderer := range []interface{ Render(Notice) (Email, error) }{ref, r} {
		if _, err := renderer.Render(Notice{Kind: "shipped", OrderID: "o-1"}); err == nil {
			t.Errorf("%T rendered an unknown kind", renderer)
		}
	}
	for _, n := range notices {
		want, err := ref.Render(n)
		if err != nil {
			t.Fatalf("templates render %+v: %v", n, err)
		}
		got, err := r.Render(n)
		if err != nil {
			t.Fatalf("render %+v: %v", n, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("email of %+v (-templates +code):\n%s", n, diff)
		}
	}
}

// TestRenderKnowsEveryField guards TestRenderMatchesTemplates: the random
// notices there set each of these fields, and the templates see them. A
// field added to Notice or Item must be added to both (and to this list).
func TestRenderKnowsEveryField(t *testing.T) {
	for typ, want := range map[reflect.Type][]string{
		reflect.TypeFor[Notice](): {"Kind", "OrderID", "Recipient", "Items", "Total", "Reason"},
		reflect.TypeFor[Item]():   {"ProductID", "Quantity", "UnitPrice"},
	} {
		var got []string
		for f := range typ.Fields() {
			got = append(got, f.Name)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("fields of %s (-known +now):\n%s", typ, diff)
		}
	}
}
