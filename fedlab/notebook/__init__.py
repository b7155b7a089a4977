"""What notebooks use: the experiment panel and reproducing every notebook."""
