//! What every hvctl verb shares: the command-line shape virsh takes (positionals,
//! `--option value` or `--option=value`, repeatable, and `--switch`es) and virsh's tables.

/// A verb's parsed arguments.
pub struct Args {
    pos: Vec<String>,
    opts: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Args {
    /// Parses `args`: `valued` lists the options that take a value, `switches_ok` the switches
    /// this verb accepts; anything else starting with `--` is an error.
    pub fn parse(args: &[String], valued: &[&str], switches_ok: &[&str]) -> Result<Args, String> {
        let mut a = Args { pos: vec![], opts: vec![], switches: vec![] };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some((k, v)) = arg.split_once('=').filter(|(k, _)| valued.contains(k)) {
                a.opts.push((k.to_string(), v.to_string()));
            } else if valued.contains(&arg.as_str()) {
                let v = it.next().ok_or_else(|| format!("option '{arg}' needs a value"))?;
                a.opts.push((arg.clone(), v.clone()));
            } else if arg.starts_with("--") {
                if !switches_ok.contains(&arg.as_str()) {
                    return Err(format!("unknown option '{arg}'"));
                }
                a.switches.push(arg.clone());
            } else {
                a.pos.push(arg.clone());
            }
        }
        Ok(a)
    }

    /// The last value of option `name`.
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.opts.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable option, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.opts.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// Whether a switch was given.
    pub fn has(&self, switch: &str) -> bool {
        self.switches.iter().any(|s| s == switch)
    }

    /// Positional `i`, or else option `name` (virsh accepts both for most arguments).
    pub fn arg(&self, i: usize, name: &str, what: &str) -> Result<&str, String> {
        self.pos
            .get(i)
            .map(String::as_str)
            .or_else(|| self.opt(name))
            .ok_or_else(|| format!("missing {what}"))
    }

    /// Refuses options outside `allowed` and more than `max_pos` positionals.
    pub fn check_known(&self, allowed: &[&str], max_pos: usize) -> Result<(), String> {
        if let Some((k, _)) = self.opts.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(format!("option '{k}' does not apply here"));
        }
        if self.pos.len() > max_pos {
            return Err(format!("unexpected argument '{}'", self.pos[max_pos]));
        }
        Ok(())
    }
}

/// Prints a table the way virsh does: a leading space, columns padded, a dashed rule.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
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
