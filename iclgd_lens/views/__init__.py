"""Built on Results and analysis tables: figures. A view never recomputes a metric."""
