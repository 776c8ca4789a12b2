//! virsh's output shapes: tables with a leading space, padded columns and a dashed rule, and
//! `Label:          value` blocks.

/// Prints a table the way virsh does.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!(" {}", s.join("   ").trim_end());
    };
    line(headers.to_vec());
    println!("{}", "-".repeat(widths.iter().sum::<usize>() + 3 * (widths.len() - 1) + 2));
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    println!();
}

/// Prints `label:` padded to virsh's 16 columns, then the value.
pub fn field(label: &str, value: impl std::fmt::Display) {
    println!("{:<16}{value}", format!("{label}:"));
}
