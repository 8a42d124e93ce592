"""The comparison report: statistics (stats), plots, rendering to Markdown and HTML, the compare stage."""
