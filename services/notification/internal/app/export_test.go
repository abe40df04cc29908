package app

// EmailRenderer renders notices, as Renderer and the templates do.
type EmailRenderer interface {
	Render(Notice) (Email, error)
}

// NewTemplateRenderer returns the renderer of the templates the service
// used before it wrote its emails in code: BenchmarkRender's baseline.
func NewTemplateRenderer() (EmailRenderer, error) {
	r, err := newTemplateRenderer()
	if err != nil {
		return nil, err
	}
	return r, nil
}
