//! Rules as data: small constructors over the `nftables` crate's JSON schema, and the table
//! and chain shapes hv installs. A rule is a list of statements (matches, then a verdict),
//! exactly what `nft -j list` prints for it; names and addresses are JSON strings, never
//! parsed as nft syntax.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::expr::{Range, SetItem, CT};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Nftables, Rule as NfRule, Table};
use nftables::stmt::{JumpTarget, Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::{Family, TableName};
use crate::types::Ipv4Cidr;
use crate::IfName;

/// One rule: its statements in order.
pub type Rule = Vec<Statement<'static>>;

/// Priority of the `filter` hook slot in the `inet` and `ip` families.
pub const PRIO_FILTER: i32 = 0;
/// Priority of the `filter` hook slot in the `bridge` family.
pub const PRIO_BRIDGE_FILTER: i32 = -200;
/// Priority of the `srcnat` hook slot.
pub const PRIO_SRCNAT: i32 = 100;
/// `raw` priority of the IP families: before connection tracking (-200) looks a packet up.
pub const PRIO_RAW: i32 = -300;

/// Where a base chain hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub kind: NfChainType,
    /// The hook.
    pub hook: NfHook,
    /// Its priority.
    pub prio: i32,
}

/// A chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// The chain's name (a fixed word of hv's).
    pub name: &'static str,
    /// The hook of a base chain (policy accept); `None` for a chain reached by `jump`.
    pub hook: Option<Hook>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl ChainSpec {
    /// A chain reached only by `jump`.
    pub fn regular(name: &'static str, rules: Vec<Rule>) -> ChainSpec {
        ChainSpec { name, hook: None, rules }
    }

    /// A base chain on `hook` with policy accept.
    pub fn base(
        name: &'static str,
        kind: NfChainType,
        hook: NfHook,
        prio: i32,
        rules: Vec<Rule>,
    ) -> ChainSpec {
        ChainSpec { name, hook: Some(Hook { kind, hook, prio }), rules }
    }
}

/// A whole table as hv installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The family.
    pub family: Family,
    /// The table's name.
    pub name: TableName,
    /// Its chains (regular chains before the base chains that jump to them).
    pub chains: Vec<ChainSpec>,
}

fn table(family: Family, name: &TableName) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: family.nf(),
        name: Cow::Owned(name.as_str().to_string()),
        handle: None,
    })
}

fn chain(family: Family, table: &TableName, c: &ChainSpec) -> Chain<'static> {
    Chain {
        family: family.nf(),
        table: Cow::Owned(table.as_str().to_string()),
        name: Cow::Borrowed(c.name),
        newname: None,
        handle: None,
        _type: c.hook.map(|h| h.kind),
        hook: c.hook.map(|h| h.hook),
        prio: c.hook.map(|h| h.prio),
        dev: None,
        policy: c.hook.map(|_| NfChainPolicy::Accept),
    }
}

/// Appends `rules` to chain `chain` of `table` in `batch`.
pub fn add_rules(
    batch: &mut Batch<'static>,
    family: Family,
    table: &TableName,
    chain: &'static str,
    rules: &[Rule],
) {
    for r in rules {
        batch.add(NfListObject::Rule(NfRule {
            family: family.nf(),
            table: Cow::Owned(table.as_str().to_string()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(r.clone()),
            handle: None,
            index: None,
            comment: None,
        }));
    }
}

/// Empties chain `name` of `table` in `batch`.
pub fn flush_chain(
    batch: &mut Batch<'static>,
    family: Family,
    table: &TableName,
    name: &'static str,
) {
    let c = ChainSpec::regular(name, Vec::new());
    batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(family, table, &c))));
}

/// `add table; delete table` (so a missing table is no error) into `batch`.
pub(crate) fn clear_table(batch: &mut Batch<'static>, family: Family, name: &TableName) {
    batch.add(table(family, name));
    batch.delete(table(family, name));
}

/// The batch that deletes a table, present or not.
pub fn delete_table(family: Family, name: &TableName) -> Nftables<'static> {
    let mut batch = Batch::new();
    clear_table(&mut batch, family, name);
    batch.to_nftables()
}

impl TableSpec {
    /// The batch that replaces the table with this one.
    pub fn replace(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        self.replace_into(&mut batch);
        batch.to_nftables()
    }

    /// Appends the commands that replace the table with this one to `batch` (several tables
    /// can so change in one transaction).
    pub fn replace_into(&self, batch: &mut Batch<'static>) {
        clear_table(batch, self.family, &self.name);
        batch.add(table(self.family, &self.name));
        for c in &self.chains {
            batch.add(NfListObject::Chain(chain(self.family, &self.name, c)));
        }
        for c in &self.chains {
            add_rules(batch, self.family, &self.name, c.name, &c.rules);
        }
    }
}

/// A packet field, e.g. `payload("ip", "saddr")`.
pub fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed(protocol),
        field: Cow::Borrowed(field),
    })))
}

/// A string value (a name, a MAC, a keyword such as `arp`).
pub fn text(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

/// A number.
pub fn num(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

/// An IPv4 address.
pub fn ip(a: Ipv4Addr) -> Expression<'static> {
    text(a.to_string())
}

/// A network (`a.b.c.d/len`, host bits cleared).
pub fn prefix(c: Ipv4Cidr) -> Expression<'static> {
    let net = c.network();
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(ip(net.addr)),
        len: u32::from(net.prefix),
    }))
}

/// An anonymous set.
pub fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(items.into_iter().map(SetItem::Element).collect()))
}

/// An inclusive range.
pub fn range(lo: u32, hi: u32) -> Expression<'static> {
    Expression::Range(Box::new(Range { range: [num(lo), num(hi)] }))
}

/// `left == right`.
pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::EQ })
}

/// `left != right`.
pub fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::NEQ })
}

/// `meta l4proto <proto>`.
pub fn l4proto(proto: &'static str) -> Statement<'static> {
    eq(Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::L4proto })), text(proto))
}

/// `meta pkttype { kinds }` (`unicast`, `broadcast`, `multicast`: what the frame was
/// addressed to at layer 2).
pub fn pkttype(kinds: &[&'static str]) -> Statement<'static> {
    let left = Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Pkttype }));
    eq(left, set(kinds.iter().map(|k| text(*k)).collect()))
}

/// `ct zone set <zone>`: the packet's connection is looked up (and made) in conntrack zone
/// `zone`, apart from every other zone's. Only before connection tracking ([`PRIO_RAW`]).
pub fn ct_zone_set(zone: u16) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("zone"),
            family: None,
            dir: None,
        })),
        value: num(zone.into()),
    })
}

/// `ether type <kind>` (`ip`, `arp`).
pub fn ether_type(kind: &'static str) -> Statement<'static> {
    eq(payload("ether", "type"), text(kind))
}

/// `iifname <name>`.
pub fn iifname(name: &IfName) -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Iifname })),
        text(name.as_str()),
    )
}

/// `oifname <name>`.
pub fn oifname(name: &IfName) -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Oifname })),
        text(name.as_str()),
    )
}

/// `accept`.
pub fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

/// `drop`.
pub fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

/// `jump <chain>`.
pub fn jump(chain: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget { target: Cow::Borrowed(chain) })
}

/// `masquerade`.
pub fn masquerade() -> Statement<'static> {
    Statement::Masquerade(None)
}

/// `ct state { states }` (the connection is in one of `states`).
pub fn ct_state(states: &[&'static str]) -> Statement<'static> {
    let ct = Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("state"),
        family: None,
        dir: None,
    }));
    let right = Expression::List(states.iter().map(|s| text(*s)).collect());
    Statement::Match(Match { left: ct, right, op: Operator::IN })
}

/// `ct state { states } accept` as one rule.
pub fn ct_established(states: &[&'static str]) -> Rule {
    vec![ct_state(states), accept()]
}
