// fixture of the include check
